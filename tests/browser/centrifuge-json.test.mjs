// centrifuge-js's default build (JSON) against a gateway: see centrifuge-suite.mjs.
import { Centrifuge } from 'centrifuge';
import { centrifugeSuite } from './centrifuge-suite.mjs';

centrifugeSuite({ Centrifuge, protobuf: false });
