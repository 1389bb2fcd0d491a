// Build the JavaScript example plugins into WebAssembly components with componentize-js.
//
//   node build.mjs [OUT_DIR]      (default OUT_DIR: examples/javascript/build)
//
// Uses the componentize() API with absolute paths (the `jco componentize` CLI stumbles on
// relative --wit paths). The world is ferry:plugin@0.2.0's `subscriber` (state included). The
// `http` engine feature stays on: it gives the handlers `fetch()`, through the standard
// wasi:http/outgoing-handler, which ferry links only for a subscriber with a
// [subscribers.NAME.http] grant. `fetch-event` (incoming requests) is disabled.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const witPath = resolve(here, '../../plugin-sdk/wit-0.2.0');
const outDir = resolve(process.argv[2] ?? join(here, 'build'));

// [source module, output file]
const plugins = [['welcome/app.js', 'welcome-js.wasm']];

await mkdir(outDir, { recursive: true });
// componentize-js maps the current directory to `/` inside the build when the source lies
// below it; that is what lets `welcome/app.js` import `../ferry-handler.js`.
process.chdir(here);
for (const [source, output] of plugins) {
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: resolve(here, source),
    witPath,
    worldName: 'subscriber',
    disableFeatures: ['fetch-event'],
  });
  const target = join(outDir, output);
  await writeFile(target, component);
  const mb = (component.byteLength / 1e6).toFixed(1);
  console.log(`built ${target} (${mb} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
