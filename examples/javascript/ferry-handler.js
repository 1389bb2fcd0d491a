// Write ferry event handlers in JavaScript (componentize-js, world `ferry:plugin/subscriber@0.2.0`).
//
// A plugin module exports `handler` (the WIT export is the interface `handler`). Build it with
// `defineHandler` so you only write the interesting part:
//
//   import { defineHandler, Reject, Retry, log } from '../ferry-handler.js';
//
//   export const handler = defineHandler({
//     subscribe: ['OrderCreated'],
//     handle(event) {
//       const order = event.json();          // malformed JSON -> Reject
//       log.info(`reserving ${order.quantity} x ${order.sku}`);
//     },
//   });
//
// `handle` may be `async` (to `await fetch(...)`): the component runs its event loop until the
// promise settles. Returning (or resolving) acknowledges the event. `throw new Retry(reason, { delayMs })` asks the
// host to try again later (its retry policy applies, then dead-lettering); `throw new
// Reject(reason)` dead-letters the event at once. Any other exception is a bug: the component
// traps, the host records a failure and applies its retry policy.
//
// The host owns retries, backoff, dead-lettering and deduplication: delivery is at least once,
// so handlers must be idempotent. Two capabilities, each off until the operator grants it:
//
// - `state`: the subscriber's own keys and values (`state = true`). Reads see the committed
//   state plus this event's own writes; the writes are committed with the event's
//   acknowledgement, so a retried, rejected or crashed event leaves none behind.
// - `fetch()`: outbound HTTP (built with componentize-js's `http` feature; granted by
//   `[subscribers.NAME.http] allow = ["https://api.example"]`). A call is at least once (a
//   retried event calls again); every request carries `Idempotency-Key: SUBSCRIBER:EVENT_ID`,
//   equal on every attempt, for the receiver to dedupe.

import { write } from 'ferry:plugin/log@0.2.0';
import { get } from 'ferry:plugin/config@0.2.0';
import { send } from 'ferry:plugin/publish@0.2.0';
import * as store from 'ferry:plugin/state@0.2.0';

// ---------------------------------------------------------------------------------- errors

/** A transient failure: the host retries later, within the subscriber's retry policy. */
export class Retry extends Error {
  /**
   * @param {string} reason
   * @param {{ delayMs?: number }} [options] `delayMs`: a hint for the delay before the next
   *   attempt; the host clamps it to the subscriber's retry policy.
   */
  constructor(reason, { delayMs } = {}) {
    super(String(reason));
    this.name = 'Retry';
    this.reason = String(reason);
    this.delayMs = delayMs;
  }
}

/** A permanent failure: the event goes to the dead-letter stream without retry. */
export class Reject extends Error {
  /** @param {string} reason */
  constructor(reason) {
    super(String(reason));
    this.name = 'Reject';
    this.reason = String(reason);
  }
}

// ---------------------------------------------------------------------------- subscriptions

/**
 * One subscription: `'Order*'` matches every type starting with `Order`, `'*'` all.
 * @param {string} eventType
 * @param {{ versions?: number[], stream?: string }} [options] `versions`: accepted schema
 *   versions (empty: every version); `stream`: read another stream than the host's default.
 */
export function subscription(eventType, { versions = [], stream } = {}) {
  return { eventType: String(eventType), versions: versions.map((v) => v >>> 0), stream };
}

// ------------------------------------------------------------------------------------ event

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

/** The event being handled, with its delivery metadata (CloudEvents attribute names). */
export class Event {
  constructor(raw, delivery) {
    this.raw = raw;
    this.delivery = delivery;
  }
  get id() { return this.raw.id; }
  get source() { return this.raw.source; }
  get type() { return this.raw.eventType; }
  get time() { return this.raw.time; }
  get contentType() { return this.raw.datacontenttype; }
  get schemaVersion() { return this.raw.schemaversion; }
  get subject() { return this.raw.subject ?? undefined; }
  get dataSchema() { return this.raw.dataschema ?? undefined; }
  get correlationId() { return this.raw.correlationid ?? undefined; }
  get causationId() { return this.raw.causationid ?? undefined; }
  get partitionKey() { return this.raw.partitionkey ?? undefined; }
  get traceparent() { return this.raw.traceparent ?? undefined; }
  /** The raw payload (Uint8Array). */
  get data() { return this.raw.data; }
  /** The stream the event was read from. */
  get stream() { return this.delivery.stream; }
  /** The stream entry id, e.g. `1700000000000-0`. */
  get entryId() { return this.delivery.entryId; }
  /** 1 on the first attempt, 2 on the first retry, ... */
  get attempt() { return this.delivery.attempt; }
  /** The subscriber (plugin name) handling the event. */
  get subscriber() { return this.delivery.subscriber; }

  /** The payload decoded as UTF-8; invalid UTF-8 is a Reject. */
  text() {
    try {
      return utf8.decode(this.raw.data);
    } catch (e) {
      throw new Reject(`payload is not UTF-8: ${e.message}`);
    }
  }

  /** The payload parsed as JSON; a malformed payload is a Reject. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Reject(`payload is not valid JSON: ${e.message}`);
    }
  }
}

// ----------------------------------------------------------------------------- host imports

/** Log lines go into the host's tracing, tagged with the plugin name and the event id. */
export const log = {
  write: (level, message) => write(level, String(message)),
  trace: (message) => write('trace', String(message)),
  debug: (message) => write('debug', String(message)),
  info: (message) => write('info', String(message)),
  warn: (message) => write('warn', String(message)),
  error: (message) => write('error', String(message)),
};

/** Values the operator granted to this plugin in the host config (none by default). */
export const config = {
  /** The value of `key`, or `fallback` (default undefined) when it was not granted. */
  get(key, fallback = undefined) {
    const value = get(String(key));
    return value === undefined || value === null ? fallback : value;
  },
};

/**
 * Follow-up events, written atomically with the acknowledgement of the handled event.
 * A refused stream or an oversized event is thrown as a Reject (like the Rust SDK); catch it
 * if the follow-up is optional.
 */
export const publish = {
  /**
   * Queue an event with a raw payload (Uint8Array or string); returns the new event's id.
   * Options: `stream` (default: the handled event's stream), `contentType` (default
   * application/json), `schemaVersion` (default 1), `subject`, `partitionKey`.
   */
  send(eventType, data, { stream, contentType, schemaVersion, subject, partitionKey } = {}) {
    const bytes = typeof data === 'string' ? encoder.encode(data) : new Uint8Array(data);
    try {
      return send({
        eventType: String(eventType),
        stream,
        data: bytes,
        datacontenttype: contentType,
        schemaversion: schemaVersion,
        subject,
        partitionkey: partitionKey,
      });
    } catch (e) {
      const reason = e && e.payload !== undefined ? e.payload : e;
      throw new Reject(`cannot publish ${eventType}: ${reason}`);
    }
  },
  /** Queue an event whose payload is `value` serialized as JSON; returns its id. */
  sendJson(eventType, value, options = {}) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (e) {
      throw new Reject(`cannot serialize ${eventType}: ${e.message}`);
    }
    return publish.send(eventType, text, options);
  },
};

/** A state call failed (not granted, a key or value over its limit, the quota reached). A
 * Retry, so uncaught it retries the event; the event's writes are discarded either way. */
export class StateError extends Retry {
  constructor(reason) {
    super(reason);
    this.name = 'StateError';
  }
}

function stateCall(op, key, call) {
  try {
    return call();
  } catch (e) {
    const reason = e && e.payload !== undefined ? e.payload : e;
    throw new StateError(`state ${op} \`${key}\`: ${reason}`);
  }
}

const bytesOf = (value) => (typeof value === 'string' ? encoder.encode(value) : new Uint8Array(value));

/**
 * The subscriber's own state (needs `state = true`): changed exactly once per event. Keys are
 * strings, values bytes (a string is stored as UTF-8). A failed call throws a StateError.
 */
export const state = {
  /** The value of `key` (Uint8Array), or undefined. */
  get(key) {
    const value = stateCall('get', key, () => store.get(String(key)));
    return value ?? undefined;
  },
  getText(key, fallback = undefined) {
    const value = state.get(key);
    return value === undefined ? fallback : new TextDecoder().decode(value);
  },
  getJson(key, fallback = undefined) {
    const text = state.getText(key);
    return text === undefined ? fallback : JSON.parse(text);
  },
  /** The values of `keys`, in order (undefined where not set). */
  getMany(keys) {
    const names = keys.map(String);
    return stateCall('getMany', names.join(','), () => store.getMany(names)).map((v) => v ?? undefined);
  },
  exists(key) {
    return stateCall('exists', key, () => store.exists(String(key)));
  },
  /** Set `key` to `value` (Uint8Array or string), committed with the event's acknowledgement. */
  set(key, value) {
    stateCall('set', key, () => store.set(String(key), bytesOf(value)));
  },
  setJson(key, value) {
    state.set(key, JSON.stringify(value));
  },
  delete(key) {
    stateCall('delete', key, () => store.delete(String(key)));
  },
  /** Add `delta` to the integer at `key` (absent: 0); returns the new value (a Number). No
   * concurrent increment is lost. */
  increment(key, delta = 1) {
    return Number(stateCall('increment', key, () => store.increment(String(key), BigInt(delta))));
  },
};

// ---------------------------------------------------------------------------------- handler

function toHandlerError(e) {
  if (e instanceof Retry) {
    const delay = e.delayMs === undefined || e.delayMs === null
      ? undefined
      : BigInt(Math.max(0, Math.floor(Number(e.delayMs))));
    return { tag: 'retry', val: { reason: e.reason, delayMs: delay } };
  }
  if (e instanceof Reject) {
    return { tag: 'reject', val: e.reason };
  }
  return undefined;
}

/**
 * Build the object to export as `handler`.
 * @param {{ subscribe: (string | ReturnType<typeof subscription>)[], handle: (event: Event) => void }} spec
 */
export function defineHandler({ subscribe, handle }) {
  if (typeof handle !== 'function') throw new TypeError('defineHandler: handle(event) is required');
  const subs = (subscribe ?? []).map((s) => (typeof s === 'string' ? subscription(s) : s));
  return {
    subscriptions() {
      return subs;
    },
    handle(event, delivery) {
      // The thrown value's `payload` becomes the `err` case of the WIT result; anything
      // else is a bug: let the component trap.
      const fail = (e) => {
        const err = toHandlerError(e);
        throw err ? { payload: err } : e;
      };
      let result;
      try {
        result = handle(new Event(event, delivery));
      } catch (e) {
        fail(e);
      }
      if (result && typeof result.then === 'function') {
        // An async handler: componentize-js runs the event loop until this settles.
        return result.then(() => undefined, fail);
      }
      return undefined;
    },
  };
}
