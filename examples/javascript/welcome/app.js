// Welcome: sends a welcome message when a user registers.
//
// Payload: {"user_id": "u-1", "email": "a@example.com", "name": "Ada"}
//
// The subscriber's state (grant `state = true`) counts the greetings per user
// (`greetings:USER_ID`): the first is a welcome, a later one (the user registered again) a
// welcome back. If config `mail_url` is granted (and its origin in `[http] allow`), the
// message is POSTed there as JSON with `fetch()`; the request carries `Idempotency-Key` (the
// same on every attempt), so the mail API can dedupe a retried event's second call. A mail
// API that cannot be reached or answers 5xx is a retry, a 4xx (an address it refuses) a
// reject; either way the count is not changed.
//
// Test switches in the payload, checked after the count: "fail": "retry" | "reject" | "throw"
// (each leaves no state behind).
// If the operator grants config key "publish" (a stream name), a WelcomeSent follow-up
// {"user_id": ...} is published to that stream.

import { config, defineHandler, log, publish, Reject, Retry, state } from '../ferry-handler.js';

export const handler = defineHandler({
  subscribe: ['UserRegistered'],

  async handle(event) {
    const user = event.json(); // malformed JSON -> Reject
    if (user === null || typeof user !== 'object' || Array.isArray(user)) {
      throw new Reject('UserRegistered payload must be a JSON object');
    }
    if (typeof user.email !== 'string' || user.email === '') {
      throw new Reject('UserRegistered payload has no email');
    }

    const greetings = state.increment(`greetings:${user.user_id}`);

    switch (user.fail) {
      case 'retry':
        throw new Retry(`mail service unavailable (attempt ${event.attempt})`, { delayMs: 1000 });
      case 'reject':
        throw new Reject(`user ${user.user_id} cannot be welcomed`);
      case 'throw':
        throw new Error('welcome handler crashed on purpose');
    }

    const subject = greetings === 1 ? 'Welcome' : 'Welcome back';
    log.info(`sending welcome message to ${user.email} (greeting ${greetings})`);
    const mail = config.get('mail_url');
    if (mail) {
      await sendMail(mail, { to: user.email, subject: `${subject}, ${user.name ?? user.email}`, greeting: greetings });
    }

    const stream = config.get('publish');
    if (stream) {
      // `handled` echoes what the handler received (provenance; the tests check it).
      const handled = {
        id: event.id, type: event.type, source: event.source, time: event.time,
        schemaversion: event.schemaVersion, subject: event.subject ?? null,
        correlationid: event.correlationId ?? null, partitionkey: event.partitionKey ?? null,
        attempt: event.attempt, stream: event.stream, data: new TextDecoder().decode(event.data),
      };
      const id = publish.sendJson('WelcomeSent', { user_id: user.user_id, greeting: greetings, handled }, { stream });
      log.debug(`published WelcomeSent ${id} to ${stream}`);
    }
  },
});

async function sendMail(url, message) {
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(message),
    });
  } catch (e) {
    throw new Retry(`mail API unreachable: ${e.message}`);
  }
  const text = await response.text();
  if (response.status >= 500) throw new Retry(`mail API answered ${response.status}`);
  if (!response.ok) throw new Reject(`mail API refused ${message.to}: ${response.status} ${text.slice(0, 200)}`);
  log.info(`mail API accepted the message to ${message.to}: ${response.status}`);
}
