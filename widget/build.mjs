// Builds the widget (src/main.ts → dist/widget.js, one minified file) or, with --tests,
// the unit tests (test/*.test.ts → dist-test/, run by `node --test`).
// Fails when the widget is over its budget: 25 KB gzipped.
import { build } from "esbuild";
import { readdirSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET_GZIP_BYTES = 25 * 1024;

if (process.argv.includes("--tests")) {
  const entries = readdirSync("test").filter((name) => name.endsWith(".test.ts")).map((name) => `test/${name}`);
  await build({
    entryPoints: entries,
    outdir: "dist-test",
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
  });
} else {
  await build({
    entryPoints: ["src/main.ts"],
    outfile: "dist/widget.js",
    bundle: true,
    minify: true,
    format: "iife",
    target: "es2020",
    legalComments: "none",
    logLevel: "warning",
  });
  const bundle = readFileSync("dist/widget.js");
  const gzipped = gzipSync(bundle, { level: 9 }).length;
  console.log(`widget: dist/widget.js ${bundle.length} bytes, ${gzipped} bytes gzipped (budget ${BUDGET_GZIP_BYTES})`);
  const placeholders = bundle.toString().split("__CLAMEUR_READS_URL__").length - 1;
  if (placeholders !== 1) {
    console.error(`widget: the reads URL placeholder appears ${placeholders} times, not once (intake replaces it)`);
    process.exit(1);
  }
  if (gzipped > BUDGET_GZIP_BYTES) {
    console.error("widget: over budget");
    process.exit(1);
  }
}
