// Test a ferry handler written in JavaScript without a host, with Node's own test runner.
//
// Inside a component, `ferry-handler.js` imports the host's interfaces (`ferry:plugin/log`,
// `ferry:plugin/config`, `ferry:plugin/publish`, `ferry:plugin/state`, all @0.2.0) and calls
// `fetch()`. Under Node, load this module first: it resolves those imports to test doubles
// and replaces `fetch`, so `config.get` reads what the test granted, `state` keeps keys as the
// host does (an event's writes are committed only if it is acknowledged), `fetch` answers with
// what the test says, and `publish` and `log` record what the handler did:
//
//   node --import ./ferry-testing.mjs --test welcome/
//
// and in the test:
//
//   import { testing } from '../ferry-testing.mjs';
//   testing.reset({ config: { publish: 'greetings' }, state: { 'greetings:u-1': '1' },
//                   http: (request) => new Response('{}', { status: 202 }) });
//   assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', {...})), 'ack');
//   assert.equal(testing.state()['greetings:u-1'], '2');
//   assert.equal(testing.requests()[0].json().to, 'a@b');
//   assert.equal(testing.published()[0].eventType, 'WelcomeSent');
import { register } from 'node:module';

const host = {
  config: {},
  refused: [],
  published: [],
  logs: [],
  committed: new Map(),
  pending: new Map(),
  stateGranted: true,
};
globalThis.__ferryTestingHost = host;

const doubles = {
  'ferry:plugin/log@0.2.0':
    'export function write(level, message) { globalThis.__ferryTestingHost.logs.push(`${level.toUpperCase()} ${message}`); }',
  'ferry:plugin/config@0.2.0':
    'export function get(key) { return globalThis.__ferryTestingHost.config[key]; }',
  'ferry:plugin/publish@0.2.0': `export function send(event) {
      const host = globalThis.__ferryTestingHost;
      if (event.stream !== undefined && host.refused.includes(event.stream)) {
        const e = new Error('refused'); e.payload = \`publishing to stream \\\`\${event.stream}\\\` is not allowed\`; throw e;
      }
      host.published.push(event);
      return \`test-follow-up-\${host.published.length}\`;
    }`,
  // The WIT `result` error case is thrown as an object with `payload`, as componentize-js does.
  'ferry:plugin/state@0.2.0': `
    const host = globalThis.__ferryTestingHost;
    function read(key) {
      if (!host.stateGranted) {
        const e = new Error('denied');
        e.payload = 'state is not granted: needs \\\`state = true\\\` in \\\`[subscribers.NAME]\\\` (or NAME.toml)';
        throw e;
      }
      return host.pending.has(key) ? host.pending.get(key) : host.committed.get(key);
    }
    function put(key, value) { read(key); host.pending.set(key, value); }
    export function get(key) { return read(key); }
    export function getMany(keys) { return keys.map(read); }
    export function exists(key) { return read(key) !== undefined; }
    export function set(key, value) { put(key, new Uint8Array(value)); }
    function remove(key) { put(key, undefined); }
    export { remove as delete };
    export function increment(key, delta) {
      const current = read(key);
      const value = BigInt(current === undefined ? '0' : new TextDecoder().decode(current)) + delta;
      host.pending.set(key, new TextEncoder().encode(String(value)));
      return value;
    }`,
};

// A resolve/load hook (Node's module customization API): the host interfaces become small
// modules of the doubles above; everything else resolves as usual.
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
const decoder = new TextDecoder();

/** An HTTP request the handler made with `fetch`. */
class Recorded {
  constructor(method, url, headers, body) {
    Object.assign(this, { method, url, headers, body });
  }
  /** The value of header `name` (any case), or undefined. */
  header(name) {
    return this.headers[name.toLowerCase()];
  }
  text() {
    return decoder.decode(this.body);
  }
  json() {
    return JSON.parse(this.text());
  }
}

let responder;
let requests = [];

// The `fetch` double: records the request, then answers with the test's `http` function (a
// Response, or a thrown error as a network failure); without one every request is refused,
// as without a grant (the host's refusal reaches fetch as a TypeError).
globalThis.fetch = async (input, init = {}) => {
  const request = new Request(input, init);
  const headers = Object.fromEntries([...request.headers].map(([k, v]) => [k.toLowerCase(), v]));
  const body = new Uint8Array(await request.arrayBuffer());
  const recorded = new Recorded(request.method, request.url, headers, body);
  requests.push(recorded);
  if (!responder) throw new TypeError('fetch failed: HttpRequestDenied (no http in testing.reset)');
  return responder(recorded);
};

export const testing = {
  /**
   * Forget follow-ups, logs, requests and state; grant `config` (nothing by default), start
   * from the committed `state` (key -> string or bytes), answer `fetch` with `http` (a
   * function of the request returning a Response; none: every request is refused).
   */
  reset({ config = {}, state = {}, http = undefined, stateGranted = true } = {}) {
    host.config = { ...config };
    host.refused = [];
    host.published = [];
    host.logs = [];
    host.committed = new Map(
      Object.entries(state).map(([k, v]) => [k, typeof v === 'string' ? encoder.encode(v) : new Uint8Array(v)]),
    );
    host.pending = new Map();
    host.stateGranted = stateGranted;
    responder = http;
    requests = [];
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
  /** The requests `fetch` got so far (`method`, `url`, `headers`, `body`; `json()`, `text()`). */
  requests() {
    return [...requests];
  },
  /** The committed state, values as text: what acknowledged events (through `handle`) left. */
  state() {
    return Object.fromEntries([...host.committed].map(([k, v]) => [k, decoder.decode(v)]));
  },
  /**
   * Run the WIT `handle(event, delivery)` of `handler` as the host does and say how it ended:
   * `'ack'` (its state writes committed), `'retry'` or `'reject'` (its writes discarded).
   * Anything else thrown discards the writes and is thrown again (in a host, a trap).
   */
  async handle(handler, event, delivery) {
    let outcome;
    try {
      await handler.handle(event, delivery);
      outcome = 'ack';
    } catch (e) {
      host.pending = new Map();
      if (e && (e.payload?.tag === 'retry' || e.payload?.tag === 'reject')) return e.payload.tag;
      throw e;
    }
    for (const [key, value] of host.pending) {
      if (value === undefined) host.committed.delete(key);
      else host.committed.set(key, value);
    }
    host.pending = new Map();
    return outcome;
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
