// MQTT over WebSocket with MQTT.js (npm `mqtt`) under node.
//
// Usage: node mqttjs_websocket.js URL CAFILE|- SUB_ID PUB_ID (URL ws:// or
// wss://...). A subscriber and a publisher (ids chosen by the test so that
// their sessions live on different shards) exchange QoS 0, 1 and 2
// messages, one larger than 64 KiB. Exits 0 when every message arrived
// intact; NODE_PATH must hold the `mqtt` package.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, cafile, subId, pubId] = process.argv.slice(2);
const tls = cafile === '-' ? {} : { ca: fs.readFileSync(cafile) };
const options = (clientId) => ({ clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10000, ...tls });
const big = Buffer.alloc(70000, 7);
const expected = [['js/a', Buffer.from('zero'), 0], ['js/b', Buffer.from('one'), 1], ['js/c', big, 2]];

const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();

const sub = mqtt.connect(url, options(subId));
sub.on('error', (e) => fail(`sub: ${e}`));
const received = [];
sub.on('message', (topic, payload, packet) => {
  received.push([topic, payload, packet.qos]);
  if (received.length < expected.length) return;
  received.sort((a, b) => a[0].localeCompare(b[0]));
  expected.forEach(([topic, payload, qos], i) => {
    const [t, p, q] = received[i];
    if (t !== topic || !p.equals(payload) || q !== qos) fail(`got ${t} ${p.length} bytes qos ${q}`);
  });
  sub.end(false, () => pub.end(false, () => { console.log('ok'); process.exit(0); }));
});
let pub;
sub.on('connect', () => sub.subscribe('js/#', { qos: 2 }, (err) => {
  if (err) fail(`subscribe: ${err}`);
  pub = mqtt.connect(url, options(pubId));
  pub.on('error', (e) => fail(`pub: ${e}`));
  pub.on('connect', () => {
    for (const [topic, payload, qos] of expected) pub.publish(topic, payload, { qos });
  });
}));
