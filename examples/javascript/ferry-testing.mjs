// Test a ferry handler written in JavaScript without a host, with Node's own test runner.
//
// Inside a component, `ferry-handler.js` imports the host's interfaces (`ferry:plugin/log`,
// `ferry:plugin/config`, `ferry:plugin/publish`). Under Node, load this module first: it
// resolves those imports to test doubles, so `config.get` reads what the test granted and
// `publish` and `log` record what the handler did:
//
//   node --import ./ferry-testing.mjs --test welcome/
//
// and in the test:
//
//   import { testing } from '../ferry-testing.mjs';
//   testing.reset({ config: { publish: 'greetings' } });
//   handler.handle(...testing.event('UserRegistered', { user_id: 'u-1', email: 'a@b' }));
//   assert.equal(testing.published()[0].eventType, 'WelcomeSent');
import { register } from 'node:module';

const host = {
  config: {},
  refused: [],
  published: [],
  logs: [],
};
globalThis.__ferryTestingHost = host;

const doubles = {
  'ferry:plugin/log@0.1.0':
    'export function write(level, message) { globalThis.__ferryTestingHost.logs.push(`${level.toUpperCase()} ${message}`); }',
  'ferry:plugin/config@0.1.0':
    'export function get(key) { return globalThis.__ferryTestingHost.config[key]; }',
  'ferry:plugin/publish@0.1.0': `export function send(event) {
      const host = globalThis.__ferryTestingHost;
      if (event.stream !== undefined && host.refused.includes(event.stream)) {
        const e = new Error('refused'); e.payload = \`publishing to stream \\\`\${event.stream}\\\` is not allowed\`; throw e;
      }
      host.published.push(event);
      return \`test-follow-up-\${host.published.length}\`;
    }`,
};

// A resolve/load hook (Node's module customization API): the three host interfaces become
// small modules of the doubles above; everything else resolves as usual.
const hooks = `
const doubles = ${JSON.stringify(doubles)};
export async function resolve(specifier, context, next) {
  if (specifier in doubles) return { url: 'ferry-testing:' + specifier, shortCircuit: true };
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (url.startsWith('ferry-testing:')) {
    return { format: 'module', source: doubles[url.slice('ferry-testing:'.length)], shortCircuit: true };
  }
  return next(url, context);
}`;
register('data:text/javascript,' + encodeURIComponent(hooks));

const encoder = new TextEncoder();

export const testing = {
  /** Forget follow-ups and logs; grant `config` (nothing by default). */
  reset({ config = {} } = {}) {
    host.config = { ...config };
    host.refused = [];
    host.published = [];
    host.logs = [];
  },
  /** Make publishing to `stream` fail, as an operator's missing grant does. */
  refuseStream(stream) {
    host.refused.push(stream);
  },
  /** The follow-ups published so far (`eventType`, `stream`, `data` as bytes, ...). */
  published() {
    return [...host.published];
  },
  /** The log lines written so far, as `LEVEL message`. */
  logs() {
    return [...host.logs];
  },
  /**
   * The `(event, delivery)` arguments of the WIT `handle` for an event of `eventType` whose
   * payload is `data` (bytes, a string, or a value serialized as JSON).
   */
  event(eventType, data = {}, { id = 'test-event', attempt = 1, stream = 'events', partitionKey } = {}) {
    const bytes =
      data instanceof Uint8Array ? data : encoder.encode(typeof data === 'string' ? data : JSON.stringify(data));
    return [
      {
        id, source: 'tests', eventType, time: '2026-01-01T00:00:00Z', datacontenttype: 'application/json',
        schemaversion: 1, subject: undefined, dataschema: undefined, correlationid: undefined,
        causationid: undefined, partitionkey: partitionKey, specversion: '1.0', traceparent: undefined, data: bytes,
      },
      { stream, entryId: '0-1', attempt, subscriber: 'test' },
    ];
  },
};
