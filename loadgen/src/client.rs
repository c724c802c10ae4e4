//! A protocol v1 client connection and token minting.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An open connection.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Signs an HS256 token for `user`, valid for a day.
pub fn mint(secret: &str, user: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    let claims = serde_json::json!({ "sub": user, "exp": exp });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Connects as `user` and waits for `welcome`.
pub async fn connect(url: &str, secret: &str, user: &str) -> anyhow::Result<Socket> {
    let token = mint(secret, user)?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
        .await
        .with_context(|| format!("connecting {user}"))?;
    let first = next_json(&mut ws).await?;
    if first["op"] != "welcome" {
        bail!("first frame is not welcome: {first}");
    }
    Ok(ws)
}

/// The next text frame as JSON (answering pings on the way).
pub async fn next_json(ws: &mut Socket) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Sends a command.
pub async fn send(ws: &mut Socket, command: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(command.to_string())).await?;
    Ok(())
}

/// Sends a command and waits for its reply, returning the `ok` body.
pub async fn request(ws: &mut Socket, command: Value) -> anyhow::Result<Value> {
    let id = command["id"].clone();
    send(ws, &command).await?;
    loop {
        let frame = next_json(ws).await?;
        if frame["id"] == id {
            if let Some(error) = frame.get("error") {
                bail!("{} failed: {error}", command["op"]);
            }
            return Ok(frame["ok"].clone());
        }
    }
}
