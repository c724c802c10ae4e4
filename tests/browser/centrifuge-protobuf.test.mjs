// centrifuge-js's Protobuf build (subprotocol `centrifuge-protobuf`, binary frames) against a
// gateway: see centrifuge-suite.mjs.
import { Centrifuge } from 'centrifuge/build/protobuf';
import { centrifugeSuite } from './centrifuge-suite.mjs';

centrifugeSuite({ Centrifuge, protobuf: true });
