// The welcome handler's own tests: no host, no Redis.
//   node --import ./ferry-testing.mjs --test welcome/    (from examples/javascript)
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { testing } from '../ferry-testing.mjs';
const { handler } = await import('./app.js');

const MAIL = 'http://mail.test/messages';
const accepted = () => new Response('{"queued":true}', { status: 202 });
const ada = { user_id: 'u-1', email: 'ada@example.com', name: 'Ada' };

test('a registered user is counted, mailed and the follow-up published where granted', async () => {
  testing.reset({ config: { publish: 'greetings', mail_url: MAIL }, http: accepted });
  assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', ada)), 'ack');
  assert.deepEqual(testing.state(), { 'greetings:u-1': '1' });
  const [request] = testing.requests();
  assert.equal(request.method, 'POST');
  assert.equal(request.url, MAIL);
  assert.equal(request.header('Content-Type'), 'application/json');
  assert.deepEqual(request.json(), { to: 'ada@example.com', subject: 'Welcome, Ada', greeting: 1 });
  const [followUp] = testing.published();
  assert.equal(followUp.eventType, 'WelcomeSent');
  assert.equal(followUp.stream, 'greetings');
  assert.equal(JSON.parse(new TextDecoder().decode(followUp.data)).user_id, 'u-1');
  assert.match(testing.logs()[0], /^INFO sending welcome message to ada@example.com \(greeting 1\)/);
});

test('a second registration is a welcome back, counted on from the committed state', async () => {
  testing.reset({ config: { mail_url: MAIL }, state: { 'greetings:u-1': '2' }, http: accepted });
  assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', ada)), 'ack');
  assert.deepEqual(testing.state(), { 'greetings:u-1': '3' });
  assert.equal(testing.requests()[0].json().subject, 'Welcome back, Ada');
});

test('an address the mail API refuses is rejected and leaves the count unchanged', async () => {
  testing.reset({ config: { mail_url: MAIL }, state: { 'greetings:u-1': '1' }, http: () => new Response('no such mailbox', { status: 422 }) });
  assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', ada)), 'reject');
  assert.deepEqual(testing.state(), { 'greetings:u-1': '1' });
});

test('a mail API down or failing is a retry and leaves no count', async () => {
  testing.reset({ config: { mail_url: MAIL }, http: () => { throw new TypeError('connection refused'); } });
  assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', ada)), 'retry');
  testing.reset({ config: { mail_url: MAIL }, http: () => new Response('busy', { status: 503 }) });
  assert.equal(await testing.handle(handler, ...testing.event('UserRegistered', ada)), 'retry');
  assert.deepEqual(testing.state(), {});
});

test('without the state grant the event is retried, naming the grant', async () => {
  testing.reset({ stateGranted: false });
  await assert.rejects(
    handler.handle(...testing.event('UserRegistered', ada)),
    (e) => e.payload?.tag === 'retry' && /state = true/.test(e.payload.val.reason),
  );
});

test('a user without an email is rejected: the WIT error the host reads', async () => {
  testing.reset();
  await assert.rejects(
    handler.handle(...testing.event('UserRegistered', { user_id: 'u-2' })),
    (e) => e.payload?.tag === 'reject' && /no email/.test(e.payload.val),
  );
  assert.deepEqual(testing.published(), []);
});

test('a transient failure asks for a retry with its delay hint; a crash leaves no state', async () => {
  testing.reset();
  await assert.rejects(
    handler.handle(...testing.event('UserRegistered', { ...ada, fail: 'retry' }, { attempt: 2 })),
    (e) => e.payload?.tag === 'retry' && e.payload.val.delayMs === 1000n,
  );
  await assert.rejects(testing.handle(handler, ...testing.event('UserRegistered', { ...ada, fail: 'throw' })), /on purpose/);
  assert.deepEqual(testing.state(), {});
});
