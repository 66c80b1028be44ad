// Builds the SDK for the places that take one file:
// - server/web/dongdong-client.js: the ES module the consoles import (the
//   JSON build, readable, committed: the server embeds it, and building the
//   server needs no Node);
// - with --check: fails when that file is not what the sources build to
//   (scripts/test.sh runs it);
// - with --size: the minified + gzipped sizes of the JSON build and of the
//   protobuf build (with protobufjs), the figures docs/sdk.md gives.

import { build } from 'esbuild';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const here = path.dirname(fileURLToPath(import.meta.url));
const sdk = path.resolve(here, '..');
const target = path.resolve(sdk, '../../server/web/dongdong-client.js');
const banner =
  '// @dongdong/client, built from sdk/js/src by sdk/js/scripts/bundle.mjs: do not edit here.\n' +
  '// The consoles import it; any page may (docs/sdk.md).\n';

async function bundle(entry, minify) {
  const out = await build({
    entryPoints: [path.join(sdk, entry)],
    bundle: true,
    format: 'esm',
    target: 'es2020',
    platform: 'browser',
    minify,
    write: false,
    legalComments: 'none',
    logLevel: 'error',
  });
  return out.outputFiles[0].text;
}

const mode = process.argv[2] ?? '--write';
if (mode === '--size') {
  for (const [name, entry] of [
    ['JSON build (index)', 'src/index.ts'],
    ['protobuf build (index + protobuf codec + protobufjs)', 'scripts/with-protobuf.ts'],
  ]) {
    const code = await bundle(entry, true);
    const gz = gzipSync(code, { level: 9 }).length;
    console.log(`${name}: ${(code.length / 1024).toFixed(1)} KB minified, ${(gz / 1024).toFixed(1)} KB gzipped`);
  }
} else {
  const code = banner + (await bundle('src/index.ts', false));
  if (mode === '--check') {
    let committed = '';
    try {
      committed = readFileSync(target, 'utf8');
    } catch {
      // missing: stale
    }
    if (committed !== code) {
      console.error(`${path.relative(process.cwd(), target)} is stale: run node sdk/js/scripts/bundle.mjs`);
      process.exit(1);
    }
  } else {
    writeFileSync(target, code);
    console.log(`wrote ${target} (${code.length} bytes)`);
  }
}
