// Welcome: sends a welcome message when a user registers.
//
// Payload: {"user_id": "u-1", "email": "a@example.com", "name": "Ada"}
//
// Test switches in the payload: "fail": "retry" | "reject" | "throw".
// If the operator grants config key "publish" (a stream name), a WelcomeSent follow-up
// {"user_id": ...} is published to that stream.

import { config, defineHandler, log, publish, Reject, Retry } from '../ferry-handler.js';

export const handler = defineHandler({
  subscribe: ['UserRegistered'],

  handle(event) {
    const user = event.json(); // malformed JSON -> Reject
    if (user === null || typeof user !== 'object' || Array.isArray(user)) {
      throw new Reject('UserRegistered payload must be a JSON object');
    }

    switch (user.fail) {
      case 'retry':
        throw new Retry(`mail service unavailable (attempt ${event.attempt})`, { delayMs: 1000 });
      case 'reject':
        throw new Reject(`user ${user.user_id} cannot be welcomed`);
      case 'throw':
        throw new Error('welcome handler crashed on purpose');
    }

    if (typeof user.email !== 'string' || user.email === '') {
      throw new Reject('UserRegistered payload has no email');
    }

    log.info(`sending welcome message to ${user.email}`);

    const stream = config.get('publish');
    if (stream) {
      // `handled` echoes what the handler received (provenance; the tests check it).
      const handled = {
        id: event.id, type: event.type, source: event.source, time: event.time,
        schemaversion: event.schemaVersion, subject: event.subject ?? null,
        correlationid: event.correlationId ?? null, partitionkey: event.partitionKey ?? null,
        attempt: event.attempt, stream: event.stream, data: new TextDecoder().decode(event.data),
      };
      const id = publish.sendJson('WelcomeSent', { user_id: user.user_id, handled }, { stream });
      log.debug(`published WelcomeSent ${id} to ${stream}`);
    }
  },
});
