// Times the Kapso SDK on the conformance corpus doing the gateway's job:
// a raw body's bytes in, the normalized JSON's bytes out. Per payload that
// is decoding the UTF-8 body, JSON.parse, normalizeWebhook, JSON.stringify
// and encoding the result, as a Node app that receives the body and
// forwards or stores the result would. The Go normalizer it is compared
// with takes and returns bytes too.
//
//   cd internal/metanorm/testdata/generate && npm install && node bench.mjs [rounds, default 7]
//
// prints the median over rounds of the mean time per payload, in ns, over
// the corpus and for the text message alone, with the same figures for
// JavaScript strings in and out (no UTF-8 decoding or encoding) beside
// them for reference.
//
// With --serve it times turns instead, one per line read from stdin: "SET
// MS" runs for at least MS milliseconds and answers the mean time per
// payload in ns. SET is corpus or text (bytes in and out), or corpus-str or
// text-str (strings). bench/ alternates these turns with the Go
// normalizer's, so that both sides are compared within the same second.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { normalizeWebhook } from "@kapso/whatsapp-cloud-api/server";

const corpus = new URL("../corpus/", import.meta.url).pathname;
const bodies = readdirSync(corpus)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => [f, readFileSync(join(corpus, f))])
  .filter(([, buf]) => {
    try {
      normalizeWebhook(JSON.parse(buf.toString("utf8")));
      return true;
    } catch {
      return false;
    }
  });

const fromBytes = (buf) => Buffer.from(JSON.stringify(normalizeWebhook(JSON.parse(buf.toString("utf8")))), "utf8");
const fromString = (text) => JSON.stringify(normalizeWebhook(JSON.parse(text)));

function timePerOp(inputs, normalize, minMs) {
  let ops = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  while (elapsed < BigInt(minMs) * 1_000_000n) {
    for (const input of inputs) {
      normalize(input);
    }
    ops += inputs.length;
    elapsed = process.hrtime.bigint() - start;
  }
  return Number(elapsed) / ops;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const buffers = bodies.map(([, buf]) => buf);
const text = bodies.find(([f]) => f === "in_text.json")[1];
const sets = {
  corpus: [buffers, fromBytes],
  text: [[text], fromBytes],
  "corpus-str": [buffers.map((b) => b.toString("utf8")), fromString],
  "text-str": [[text.toString("utf8")], fromString],
};
for (const [inputs, normalize] of Object.values(sets)) {
  timePerOp(inputs, normalize, 250); // warm up the JIT
}

if (process.argv[2] === "--serve") {
  for await (const line of createInterface({ input: process.stdin })) {
    const [name, ms] = line.trim().split(/\s+/);
    const set = sets[name];
    if (!set || !(Number(ms) > 0)) {
      console.error(`turn "${line}": want "SET MS" with SET one of ${Object.keys(sets).join(", ")}`);
      process.exit(1);
    }
    console.log(timePerOp(set[0], set[1], Number(ms)).toFixed(1));
  }
} else {
  const rounds = Number(process.argv[2] ?? 7);
  const times = Object.fromEntries(Object.keys(sets).map((k) => [k, []]));
  for (let i = 0; i < rounds; i++) {
    for (const [name, [inputs, normalize]] of Object.entries(sets)) {
      times[name].push(timePerOp(inputs, normalize, 300));
    }
  }
  console.log(JSON.stringify({
    node: process.version,
    payloads: buffers.length,
    corpus_bytes: buffers.reduce((a, b) => a + b.length, 0),
    corpus_ns_per_payload: Math.round(median(times.corpus)),
    text_message_bytes: text.length,
    text_message_ns: Math.round(median(times.text)),
    strings_corpus_ns_per_payload: Math.round(median(times["corpus-str"])),
    strings_text_message_ns: Math.round(median(times["text-str"])),
  }));
}
