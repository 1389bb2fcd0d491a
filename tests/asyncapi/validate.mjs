// Parse and validate an AsyncAPI document with @asyncapi/parser; print every diagnostic of
// severity error (0) and exit 1 if there is one. Usage: node validate.mjs FILE
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const text = readFileSync(process.argv[2], 'utf8');
const { document, diagnostics } = await new Parser().parse(text);
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${['error', 'warning', 'info', 'hint'][d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
}
if (!document || errors.length > 0) {
  process.exit(1);
}
console.log(`valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ${document.operations().length} operations, ${document.allMessages().length} messages`);
