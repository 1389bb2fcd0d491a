// The welcome handler's own tests: no host, no Redis.
//   node --import ./ferry-testing.mjs --test welcome/    (from examples/javascript)
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { testing } from '../ferry-testing.mjs';
const { handler } = await import('./app.js');

test('a registered user is welcomed and the follow-up published where granted', () => {
  testing.reset({ config: { publish: 'greetings' } });
  handler.handle(...testing.event('UserRegistered', { user_id: 'u-1', email: 'ada@example.com' }));
  const [followUp] = testing.published();
  assert.equal(followUp.eventType, 'WelcomeSent');
  assert.equal(followUp.stream, 'greetings');
  assert.equal(JSON.parse(new TextDecoder().decode(followUp.data)).user_id, 'u-1');
  assert.match(testing.logs()[0], /^INFO sending welcome message to ada@example.com/);
});

test('a user without an email is rejected: the WIT error the host reads', () => {
  testing.reset();
  assert.throws(
    () => handler.handle(...testing.event('UserRegistered', { user_id: 'u-2' })),
    (e) => e.payload?.tag === 'reject' && /no email/.test(e.payload.val),
  );
  assert.deepEqual(testing.published(), []);
});

test('a transient failure asks for a retry with its delay hint', () => {
  testing.reset();
  assert.throws(
    () => handler.handle(...testing.event('UserRegistered', { user_id: 'u-3', fail: 'retry' }, { attempt: 2 })),
    (e) => e.payload?.tag === 'retry' && e.payload.val.delayMs === 1000n,
  );
});
