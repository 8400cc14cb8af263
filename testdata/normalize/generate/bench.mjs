// Times the Kapso SDK on the conformance corpus: JSON.parse + normalizeWebhook
// + JSON.stringify per payload, as a Node app receiving the raw body would.
// Prints the median over rounds of the mean time per payload, in ns, and the
// time for the single text message bench/ compares against.
//
//   cd testdata/normalize/generate && npm install && node bench.mjs [rounds, default 7]
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { normalizeWebhook } from "@kapso/whatsapp-cloud-api/server";

const corpus = new URL("../corpus/", import.meta.url).pathname;
const bodies = readdirSync(corpus)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => [f, readFileSync(join(corpus, f), "utf8")])
  .filter(([, t]) => {
    try {
      normalizeWebhook(JSON.parse(t));
      return true;
    } catch {
      return false;
    }
  });

function timePerOp(texts, minMs) {
  let ops = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  while (elapsed < BigInt(minMs) * 1_000_000n) {
    for (const t of texts) {
      JSON.stringify(normalizeWebhook(JSON.parse(t)));
    }
    ops += texts.length;
    elapsed = process.hrtime.bigint() - start;
  }
  return Number(elapsed) / ops;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const texts = bodies.map(([, t]) => t);
const text = bodies.find(([f]) => f === "in_text.json")[1];
timePerOp(texts, 500); // warm up the JIT
const rounds = Number(process.argv[2] ?? 7);
const corpusRounds = [], textRounds = [];
for (let i = 0; i < rounds; i++) {
  corpusRounds.push(timePerOp(texts, 300));
  textRounds.push(timePerOp([text], 300));
}
const bytes = texts.reduce((a, t) => a + Buffer.byteLength(t), 0);
console.log(JSON.stringify({
  node: process.version,
  payloads: texts.length,
  corpus_bytes: bytes,
  corpus_ns_per_payload: Math.round(median(corpusRounds)),
  text_message_bytes: Buffer.byteLength(text),
  text_message_ns: Math.round(median(textRounds)),
}));
