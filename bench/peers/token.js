// Shared by the peers: the JWT's `sub`, read from the payload WITHOUT verifying the signature
// (the peers skip verification, which favours them; see README.md).

function subFromToken(token) {
  if (typeof token !== "string" || !token) return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    return typeof claims.sub === "string" && claims.sub.length > 0 ? claims.sub : null;
  } catch {
    return null;
  }
}

module.exports = { subFromToken };
