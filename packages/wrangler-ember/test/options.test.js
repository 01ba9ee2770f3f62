import { test } from "node:test";
import assert from "node:assert/strict";
import { parseOptions, parseAddress, DEFAULT_ADDRESS } from "../src/options.js";

// The environment fallbacks would make these tests depend on the caller's shell.
delete process.env.EMBER_ADDRESS;
delete process.env.EMBER_TOKEN;

test("address defaults to 127.0.0.1:8787 and no token", () => {
  assert.deepEqual(parseOptions({}), { address: DEFAULT_ADDRESS, token: undefined });
  assert.deepEqual(parseOptions(), { address: "127.0.0.1:8787", token: undefined });
});

test("host:port, [ipv6]:port and http URLs become host:port", () => {
  assert.equal(parseAddress("127.0.0.1:9000"), "127.0.0.1:9000");
  assert.equal(parseAddress(" localhost:9000 "), "localhost:9000");
  assert.equal(parseAddress("[::1]:8787"), "[::1]:8787");
  assert.equal(parseAddress("http://127.0.0.1:8787"), "127.0.0.1:8787");
  assert.equal(parseAddress("http://127.0.0.1:8787/"), "127.0.0.1:8787");
  assert.equal(parseAddress("http://ember.internal"), "ember.internal:80");
});

test("bad addresses are refused with a message naming the value", () => {
  for (const bad of ["", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host:port", 8787, null]) {
    assert.throws(() => parseAddress(bad), /"address" must be/, String(bad));
  }
  assert.throws(() => parseAddress("https://ember.example:443"), /only http:\/\//);
  assert.throws(() => parseAddress("http://127.0.0.1:8787/client/v4"), /must not have a path/);
});

test("token is trimmed; empty, multi-line or non-string tokens are refused", () => {
  assert.equal(parseOptions({ token: " abc " }).token, "abc");
  for (const bad of ["", "  ", "a\nb", 42]) assert.throws(() => parseOptions({ token: bad }), /"token"/);
});

test("options must be an object", () => {
  for (const bad of [null, [], "127.0.0.1:8787"]) assert.throws(() => parseOptions(bad), /options must be an object/);
});

test("EMBER_ADDRESS and EMBER_TOKEN fill in what the config leaves out", () => {
  process.env.EMBER_ADDRESS = "127.0.0.1:9999";
  process.env.EMBER_TOKEN = "from-env";
  try {
    assert.deepEqual(parseOptions({}), { address: "127.0.0.1:9999", token: "from-env" });
    assert.deepEqual(parseOptions({ address: "127.0.0.1:1234", token: "t" }), { address: "127.0.0.1:1234", token: "t" });
  } finally {
    delete process.env.EMBER_ADDRESS;
    delete process.env.EMBER_TOKEN;
  }
});
