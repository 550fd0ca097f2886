// validate.mjs: reads a rendered kustomization (YAML, many documents) on
// stdin and validates every object against the Kubernetes OpenAPI schema of
// its apiVersion and kind, with the generated validators of kubernetes-models
// (types, formats, required fields, enums; like the API server's schema
// check, it does not refuse unknown fields). An object of a kind it does not
// know fails too. Prints one line per error and exits 1 if any; with --json,
// prints the objects as a JSON array on stdout when all are valid (the
// test's further checks read it).
import { parseAllDocuments } from "yaml";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const docs = parseAllDocuments(Buffer.concat(chunks).toString("utf8"));
const objects = [];
const errors = [];
for (const d of docs) {
  if (d.errors.length) {
    errors.push(`YAML: ${d.errors.map((e) => e.message).join("; ")}`);
    continue;
  }
  const o = d.toJS();
  if (o === null || o === undefined) continue;
  const where = `${o.kind}/${o.metadata?.name}`;
  const av = String(o.apiVersion ?? "");
  if (!/^([a-z0-9.-]+\/)?v[0-9]+(alpha[0-9]+|beta[0-9]+)?$/.test(av) || !/^[A-Z][A-Za-z0-9]*$/.test(o.kind ?? "")) {
    errors.push(`${where}: apiVersion '${av}' / kind '${o.kind}' malformed`);
    continue;
  }
  let Model;
  try {
    Model = (await import(`kubernetes-models/${av}/${o.kind}`))[o.kind];
  } catch {
    errors.push(`${where}: no schema for ${av} ${o.kind}`);
    continue;
  }
  try {
    new Model(o).validate();
  } catch (e) {
    errors.push(`${where}: ${e.message}`);
    continue;
  }
  objects.push(o);
}
for (const e of errors) console.error(e);
if (errors.length) process.exit(1);
if (process.argv.includes("--json")) console.log(JSON.stringify(objects));
else console.error(`${objects.length} objects valid`);
