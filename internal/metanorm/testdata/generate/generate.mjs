// Runs the real normalizeWebhook() of @kapso/whatsapp-cloud-api 0.3.0 over
// every payload in ../corpus and writes what it returns, serialized with
// JSON.stringify, to ../golden/<name>.json. A payload on which the SDK
// throws gets {"__throws": "<message>"} instead.
//
//   cd internal/metanorm/testdata/generate && npm install && node generate.mjs
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { normalizeWebhook } from "@kapso/whatsapp-cloud-api/server";

const version = JSON.parse(
  readFileSync(new URL("./node_modules/@kapso/whatsapp-cloud-api/package.json", import.meta.url), "utf8"),
).version;
if (version !== "0.3.0") {
  throw new Error(`expected @kapso/whatsapp-cloud-api 0.3.0, found ${version}`);
}

const corpus = new URL("../corpus/", import.meta.url).pathname;
const golden = new URL("../golden/", import.meta.url).pathname;
let n = 0;
for (const name of readdirSync(corpus).filter((f) => f.endsWith(".json")).sort()) {
  const text = readFileSync(join(corpus, name), "utf8");
  let out;
  try {
    out = JSON.stringify(normalizeWebhook(JSON.parse(text)));
  } catch (err) {
    out = JSON.stringify({ __throws: String(err && err.message) });
  }
  writeFileSync(join(golden, name), out);
  n++;
}
console.log(`wrote ${n} goldens with @kapso/whatsapp-cloud-api ${version}`);
