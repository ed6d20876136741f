// A small MQTT 3.1.1 device over mutual TLS for the portal tests: it connects as an Azure device
// does, subscribes to direct methods and cloud-to-device messages, answers every method call with
// status 200 and {"answered": NAME}, acknowledges and records C2D messages, and publishes
// telemetry. Only what the tests need; the hub's own codec is tested in Rust.
import tls from "node:tls";
import { readFileSync } from "node:fs";

function str(s) {
  const b = Buffer.from(s, "utf8");
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

function packet(type, flags, body) {
  const lenBytes = [];
  let n = body.length;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    lenBytes.push(byte);
  } while (n > 0);
  return Buffer.concat([Buffer.from([(type << 4) | flags, ...lenBytes]), body]);
}

export class MqttDevice {
  constructor({ host, port, ca, cert, key, id }) {
    this.id = id;
    this.c2d = [];
    this.methods = [];
    this.buffer = Buffer.alloc(0);
    this.nextId = 1;
    this.socket = tls.connect({ host, port, ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key), servername: "localhost" });
    this.socket.on("data", (d) => this.#onData(d));
    this.socket.on("error", () => {});
    this.connected = new Promise((ok, fail) => { this.onConnack = ok; this.onRefused = fail; });
    this.socket.once("secureConnect", () => {
      // Level 4 (3.1.1); flags: a username, clean session; keep-alive 60 s.
      const body = Buffer.concat([str("MQTT"), Buffer.from([4, 0x82, 0, 60]), str(id), str(`localhost/${id}/?api-version=2021-04-12`)]);
      this.socket.write(packet(1, 0, body));
    });
  }

  async ready() {
    await this.connected;
    const pkid = this.nextId++;
    const filters = [`$iothub/methods/POST/#`, `devices/${this.id}/messages/devicebound/#`];
    const body = Buffer.concat([Buffer.from([pkid >> 8, pkid & 0xff]), ...filters.map((f) => Buffer.concat([str(f), Buffer.from([1])]))]);
    this.subscribed = new Promise((ok) => { this.onSuback = ok; });
    this.socket.write(packet(8, 2, body));
    await this.subscribed;
  }

  publish(topic, payload) {
    this.socket.write(packet(3, 0, Buffer.concat([str(topic), Buffer.from(payload)])));
  }

  close() {
    this.socket.write(packet(14, 0, Buffer.alloc(0)));
    this.socket.end();
  }

  #onData(data) {
    this.buffer = Buffer.concat([this.buffer, data]);
    for (;;) {
      let mult = 1, len = 0, i = 1, byte;
      do {
        if (i >= this.buffer.length) return;
        byte = this.buffer[i++];
        len += (byte & 0x7f) * mult;
        mult *= 128;
      } while (byte & 0x80);
      if (this.buffer.length < i + len) return;
      const header = this.buffer[0];
      const body = this.buffer.subarray(i, i + len);
      this.buffer = this.buffer.subarray(i + len);
      this.#onPacket(header >> 4, header & 0x0f, body);
    }
  }

  #onPacket(type, flags, body) {
    if (type === 2) {
      if (body[1] === 0) this.onConnack(); else this.onRefused(new Error("CONNACK " + body[1]));
    } else if (type === 9) {
      this.onSuback();
    } else if (type === 3) {
      const tlen = body.readUInt16BE(0);
      const topic = body.subarray(2, 2 + tlen).toString("utf8");
      const qos = (flags >> 1) & 3;
      let rest = body.subarray(2 + tlen);
      if (qos > 0) {
        const pkid = rest.readUInt16BE(0);
        rest = rest.subarray(2);
        this.socket.write(packet(4, 0, Buffer.from([pkid >> 8, pkid & 0xff])));
      }
      const payload = rest.toString("utf8");
      const method = topic.match(/^\$iothub\/methods\/POST\/([^/]+)\/\?\$rid=(\w+)/);
      if (method) {
        this.methods.push({ name: method[1], payload });
        this.publish(`$iothub/methods/res/200/?$rid=${method[2]}`, JSON.stringify({ answered: method[1] }));
      } else {
        this.c2d.push(payload);
      }
    }
  }
}
