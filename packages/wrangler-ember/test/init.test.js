import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseJsonc, localConfig, init, findConfig, MARKER, OUTPUT_NAME } from "../src/init.js";

const BIN = fileURLToPath(new URL("../bin/wrangler-ember.js", import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), "wrangler-ember-test-"));
process.on("exit", () => fs.rmSync(root, { recursive: true, force: true }));
const tmp = () => fs.mkdtempSync(path.join(root, "p-"));
/** Our output is comment lines, then JSON. */
const readOutput = (file) => parseJsonc(fs.readFileSync(file, "utf8"));

const USER_CONFIG = `{
  // An ordinary Workers project.
  "$schema": "node_modules/wrangler/config-schema.json",
  "name": "my-worker", /* block comment */
  "main": "src/index.ts",
  "compatibility_date": "2025-10-01",
  "vars": { "URL": "http://example.com/a//b", "NOTE": "not /* a comment */, really," },
  "ai": { "binding": "AI" },
}
`;

test("parseJsonc: comments and trailing commas go, strings stay intact", () => {
  const c = parseJsonc(USER_CONFIG);
  assert.equal(c.name, "my-worker");
  assert.equal(c.vars.URL, "http://example.com/a//b");
  assert.equal(c.vars.NOTE, "not /* a comment */, really,");
  assert.deepEqual(parseJsonc('[1, 2, /* x */ ]'), [1, 2]);
  assert.deepEqual(parseJsonc('{"a": "q\\"//", // c\n "b": [1,\n // x\n ],}'), { a: 'q"//', b: [1] });
  assert.throws(() => parseJsonc("{oops}", "w.jsonc"), /could not parse w\.jsonc as JSONC/);
});

test("localConfig: ai becomes an unsafe plugin binding, per environment, other keys kept", () => {
  const config = {
    name: "w",
    ai: { binding: "AI" },
    unsafe: { bindings: [{ name: "X", type: "x" }] },
    env: { staging: { ai: { binding: "AI2" } }, prod: { vars: { A: "1" } } },
  };
  const { config: out, bindings } = localConfig(config, "http://127.0.0.1:9000/");
  assert.deepEqual(bindings, ["AI", "env.staging: AI2"]);
  assert.equal(out.ai, undefined);
  assert.equal(config.ai.binding, "AI", "input not modified");
  const plugin = { package: "wrangler-ember", name: "ember" };
  assert.deepEqual(out.unsafe.bindings, [
    { name: "X", type: "x" },
    { name: "AI", type: "ai", dev: { plugin, options: { address: "127.0.0.1:9000" } } },
  ]);
  assert.deepEqual(out.env.staging, {
    unsafe: { bindings: [{ name: "AI2", type: "ai", dev: { plugin, options: { address: "127.0.0.1:9000" } } }] },
  });
  assert.deepEqual(out.env.prod, { vars: { A: "1" } });
  assert.throws(() => localConfig({ ai: {} }), /"ai" has no "binding"/);
  assert.deepEqual(localConfig({ name: "w" }).bindings, []);
});

test("init writes wrangler.local.jsonc beside the config, which stays untouched", () => {
  const dir = tmp();
  fs.writeFileSync(path.join(dir, "wrangler.jsonc"), USER_CONFIG);
  const sub = path.join(dir, "src");
  fs.mkdirSync(sub);
  // Found from a subdirectory too, as wrangler finds it.
  assert.equal(findConfig(sub), path.join(dir, "wrangler.jsonc"));
  const result = init({ cwd: sub, address: "127.0.0.1:9000" });
  assert.equal(result.output, path.join(dir, OUTPUT_NAME));
  assert.deepEqual(result.bindings, ["AI"]);
  assert.equal(fs.readFileSync(path.join(dir, "wrangler.jsonc"), "utf8"), USER_CONFIG);
  const text = fs.readFileSync(result.output, "utf8");
  assert.ok(text.startsWith(MARKER));
  const out = readOutput(result.output);
  assert.equal(out.main, "src/index.ts"); // same directory: wrangler resolves it as before
  assert.equal(out.ai, undefined);
  assert.equal(out.unsafe.bindings[0].dev.options.address, "127.0.0.1:9000");
  // The package is not installed in that temporary project: init says what to do.
  assert.match(result.warnings.join("\n"), /npm i -D wrangler-ember/);
  // Running again overwrites our own file.
  init({ config: path.join(dir, "wrangler.jsonc") });
  assert.equal(readOutput(result.output).unsafe.bindings[0].dev.options.address, "127.0.0.1:8787");
});

test("init refuses a config without ai, a missing config, and a foreign output file", () => {
  const dir = tmp();
  assert.throws(() => init({ cwd: dir }), /no wrangler\.json, wrangler\.jsonc, wrangler\.toml found/);
  assert.throws(() => init({ cwd: dir, config: "nope.jsonc" }), /does not exist/);
  fs.writeFileSync(path.join(dir, "wrangler.json"), '{"name": "w"}');
  assert.throws(() => init({ cwd: dir }), /has no "ai" binding/);
  fs.writeFileSync(path.join(dir, "wrangler.json"), '{"name": "w", "ai": {"binding": "AI"}}');
  fs.writeFileSync(path.join(dir, OUTPUT_NAME), "{}\n");
  assert.throws(() => init({ cwd: dir }), /not written by wrangler-ember init; pass --force/);
  init({ cwd: dir, force: true });
  assert.equal(readOutput(path.join(dir, OUTPUT_NAME)).unsafe.bindings[0].name, "AI");
  assert.throws(() => init({ cwd: dir, address: "nowhere" }), /"address" must be host:port/);
});

test("a TOML config without the project's wrangler gives a clear error", () => {
  const dir = tmp();
  fs.writeFileSync(path.join(dir, "wrangler.toml"), 'name = "w"\n[ai]\nbinding = "AI"\n');
  assert.throws(() => init({ cwd: dir }), /reading TOML needs the project's wrangler/);
});

test("the CLI: init with --address and --config, usage errors exit 2", () => {
  const dir = tmp();
  fs.writeFileSync(path.join(dir, "my.jsonc"), USER_CONFIG);
  const run = (...args) => spawnSync(process.execPath, [BIN, ...args], { cwd: dir, encoding: "utf8" });
  const ok = run("init", "--address", "127.0.0.1:9123", "--config", "my.jsonc");
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /wrote wrangler\.local\.jsonc \(Ember at 127\.0\.0\.1:9123 serves AI\)/);
  assert.match(ok.stdout, /npx wrangler dev -c wrangler\.local\.jsonc/);
  assert.equal(readOutput(path.join(dir, OUTPUT_NAME)).unsafe.bindings[0].dev.options.address, "127.0.0.1:9123");
  assert.equal(run().status, 2);
  assert.equal(run("deploy").status, 2);
  assert.equal(run("init", "--bogus").status, 2);
  assert.equal(run("--help").status, 0);
  const bad = run("init", "--config", "missing.jsonc");
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /^wrangler-ember: .*missing\.jsonc does not exist/);
});
