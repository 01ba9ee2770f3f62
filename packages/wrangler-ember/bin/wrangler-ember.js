#!/usr/bin/env node
// CLI: `wrangler-ember init [--address host:port] [--config wrangler.jsonc] [--force]`.
import { parseArgs } from "node:util";
import path from "node:path";
import { init, OUTPUT_NAME } from "../src/init.js";
import { DEFAULT_ADDRESS } from "../src/options.js";

const USAGE = `Usage: wrangler-ember init [--address host:port] [--config path] [--force]

Writes ${OUTPUT_NAME} next to your wrangler config: the same config, with its "ai" binding
served by Ember. Then: npx wrangler dev -c ${OUTPUT_NAME}

  --address  host:port where Ember listens (default ${DEFAULT_ADDRESS})
  --config   the wrangler config to read (default: wrangler.json, wrangler.jsonc or
             wrangler.toml in this directory or above, as wrangler finds it)
  --force    overwrite an existing ${OUTPUT_NAME} that this tool did not write`;

function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        address: { type: "string", short: "a", default: DEFAULT_ADDRESS },
        config: { type: "string", short: "c" },
        force: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (error) {
    console.error(`wrangler-ember: ${error.message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] !== "init") {
    console.error(USAGE);
    return 2;
  }
  try {
    const { output, address, bindings, warnings } = init({ config: values.config, address: values.address, force: values.force });
    const rel = path.relative(process.cwd(), output) || output;
    console.log(`wrangler-ember: wrote ${rel} (Ember at ${address} serves ${bindings.join(", ")})`);
    for (const warning of warnings) console.warn(`wrangler-ember: warning: ${warning}`);
    console.log(`Next: npx wrangler dev -c ${rel}   (you may add ${OUTPUT_NAME} to .gitignore)`);
    return 0;
  } catch (error) {
    console.error(`wrangler-ember: ${error.message}`);
    return 1;
  }
}

process.exitCode = main(process.argv.slice(2));
