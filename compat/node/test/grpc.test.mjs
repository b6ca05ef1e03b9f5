// RocketMQ 5's official Node.js client (rocketmq-client-nodejs) over gRPC
// against apogee standalone: sends of every kind, the simple and push
// consumers, filters and transactions with check-back.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  ConsumeResult,
  FilterExpression,
  Producer,
  PushConsumer,
  SimpleConsumer,
} from 'rocketmq-client-nodejs';
import definitions from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb.js';

import { admin, quietLogger, receiveUntil, sleep, startApogee, unique } from '../lib/apogee.mjs';

const { FilterType, TransactionResolution } = definitions;

let broker;
let producer;
const clients = [];

function simple(group, subscriptions, awaitDuration = 2000) {
  const c = new SimpleConsumer({
    endpoints: broker.endpoints,
    namespace: '',
    consumerGroup: group,
    subscriptions,
    awaitDuration,
    logger: quietLogger,
  });
  clients.push(c);
  return c;
}

before(async () => {
  broker = await startApogee();
  producer = new Producer({ endpoints: broker.endpoints, namespace: '', logger: quietLogger });
  clients.push(producer);
  await producer.startup();
});

after(async () => {
  // A client's shutdown can wait on a long poll: give each a few seconds.
  await Promise.all(
    clients.map((c) => Promise.race([c.shutdown().catch(() => {}), sleep(5000)])),
  );
  broker.stop();
  // The client leaves channels and timers behind after shutdown, which
  // would keep this file's process alive: end it once results are out
  // (process.exitCode carries any failure).
  setTimeout(() => process.exit(), 1000);
});

const body = (m) => m.body.toString();

test('normal messages are received once and stay acked', async () => {
  const topic = unique('NodeNormal');
  const sent = new Set();
  for (let i = 0; i < 20; i++) {
    const r = await producer.send({ topic, tag: 'a', keys: [`k${i}`], body: Buffer.from(`n${i}`) });
    assert.ok(r.messageId);
    sent.add(`n${i}`);
  }
  const c = simple(unique('node-normal'), new Map().set(topic, '*'));
  await c.startup();
  const got = await receiveUntil(c, { done: (all) => all.length >= 20 });
  assert.deepEqual(new Set(got.map(body)), sent);
  assert.equal(got.length, 20, 'each message once');
  assert.ok(got.every((m) => m.deliveryAttempt === 1 && m.topic === topic && m.tag === 'a'));
  const again = await receiveUntil(c, { ms: 4000, invisible: 2000 });
  assert.equal(again.length, 0, `acked messages came back: ${again.map(body)}`);
});

test('an unacked message comes back; changeInvisibleDuration holds another', async () => {
  const topic = unique('NodeInvisible');
  await producer.send({ topic, body: Buffer.from('lost') });
  await producer.send({ topic, body: Buffer.from('held') });
  const c = simple(unique('node-invisible'), new Map().set(topic, '*'));
  await c.startup();
  const first = await receiveUntil(c, { ack: false, invisible: 3000, done: (all) => all.length >= 2 });
  assert.equal(first.length, 2);
  const held = first.find((m) => body(m) === 'held');
  await c.changeInvisibleDuration(held, 60000);
  const back = await receiveUntil(c, { ms: 20000, ack: false, invisible: 60000, done: (all) => all.length >= 1 });
  assert.deepEqual(back.map(body), ['lost'], 'only the un-extended message returns');
  assert.equal(back[0].deliveryAttempt, 2);
  await c.ack(back[0]);
});

test('tag and SQL92 filters', async () => {
  const topic = unique('NodeFilter');
  for (let i = 0; i < 8; i++) {
    await producer.send({
      topic,
      tag: i % 2 ? 'odd' : 'even',
      properties: new Map().set('n', String(i)),
      body: Buffer.from(`f${i}`),
    });
  }
  const tag = simple(unique('node-tag'), new Map().set(topic, new FilterExpression('odd')));
  const sql = simple(unique('node-sql'), new Map().set(topic, new FilterExpression('n BETWEEN 2 AND 4', FilterType.SQL)));
  await tag.startup();
  await sql.startup();
  const byTag = await receiveUntil(tag, { ms: 8000 });
  const bySql = await receiveUntil(sql, { ms: 8000 });
  assert.deepEqual(new Set(byTag.map(body)), new Set(['f1', 'f3', 'f5', 'f7']));
  assert.deepEqual(new Set(bySql.map(body)), new Set(['f2', 'f3', 'f4']));
});

test('FIFO: one message group arrives in order', async () => {
  const topic = unique('NodeFifo');
  const group = unique('node-fifo');
  admin(broker, 'updateSubGroup', '-c', 'DefaultCluster', '-g', group, '-o', 'true');
  for (let i = 0; i < 10; i++) {
    await producer.send({ topic, messageGroup: 'order-1', body: Buffer.from(String(i)) });
  }
  const c = simple(group, new Map().set(topic, '*'));
  await c.startup();
  const got = await receiveUntil(c, { done: (all) => all.length >= 10 });
  assert.deepEqual(got.map(body), ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  assert.ok(got.every((m) => m.messageGroup === 'order-1'));
});

test('delay: invisible until its delivery time', async () => {
  const topic = unique('NodeDelay');
  const sentAt = Date.now();
  await producer.send({ topic, delay: 3000, body: Buffer.from('later') });
  const c = simple(unique('node-delay'), new Map().set(topic, '*'));
  await c.startup();
  const got = await receiveUntil(c, { ms: 9000 });
  assert.deepEqual(got.map(body), ['later']);
  assert.ok(Date.now() - sentAt >= 2900);
  assert.ok(got[0].deliveryTimestamp, 'the delivery time is on the message');
});

test('recall: a recalled delayed message is never received', async () => {
  const topic = unique('NodeRecall');
  const gone = await producer.send({ topic, delay: 3000, body: Buffer.from('recalled') });
  await producer.send({ topic, delay: 3000, body: Buffer.from('kept') });
  assert.ok(gone.recallHandle, 'a delayed send answers a recall handle');
  await assert.rejects(producer.recallMessage(topic, 'not-a-handle'), /invalid/i);
  const receipt = await producer.recallMessage(topic, gone.recallHandle);
  assert.equal(receipt.messageId, gone.messageId);
  const c = simple(unique('node-recall'), new Map().set(topic, '*'));
  await c.startup();
  // Both are due together: only the kept one comes, also given time.
  const got = await receiveUntil(c, { ms: 9000 });
  assert.deepEqual(got.map(body), ['kept']);
});

test('transactions: commit, rollback and check-back', async () => {
  const topic = unique('NodeTx');
  const checked = [];
  const txProducer = new Producer({
    endpoints: broker.endpoints,
    namespace: '',
    logger: quietLogger,
    checker: {
      async check(view) {
        checked.push(body(view));
        return TransactionResolution.COMMIT;
      },
    },
  });
  clients.push(txProducer);
  await txProducer.startup();
  for (const [text, end] of [['commit', 'commit'], ['rollback', 'rollback'], ['checked', null]]) {
    const tx = txProducer.beginTransaction();
    await txProducer.send({ topic, body: Buffer.from(text) }, tx);
    if (end === 'commit') await tx.commit();
    if (end === 'rollback') await tx.rollback();
  }
  const c = simple(unique('node-tx'), new Map().set(topic, '*'));
  await c.startup();
  const got = await receiveUntil(c, { ms: 25000, done: (all) => all.length >= 2 });
  await sleep(2000);
  got.push(...(await receiveUntil(c, { ms: 2000 })));
  assert.deepEqual(new Set(got.map(body)), new Set(['commit', 'checked']));
  assert.equal(got.length, 2);
  assert.ok(checked.includes('checked'), `check-back asked about: ${checked}`);
});

test('push consumer: a failed message is retried', async () => {
  const topic = unique('NodePush');
  const seen = new Map();
  const push = new PushConsumer({
    endpoints: broker.endpoints,
    namespace: '',
    consumerGroup: unique('node-push'),
    subscriptions: new Map().set(topic, '*'),
    logger: quietLogger,
    messageListener: {
      async consume(view) {
        const b = body(view);
        const n = (seen.get(b) || 0) + 1;
        seen.set(b, n);
        return b === 'p1' && n === 1 ? ConsumeResult.FAILURE : ConsumeResult.SUCCESS;
      },
    },
  });
  clients.push(push);
  await push.startup();
  for (let i = 0; i < 3; i++) await producer.send({ topic, body: Buffer.from(`p${i}`) });
  const deadline = Date.now() + 40000;
  while (Date.now() < deadline && !((seen.get('p1') || 0) >= 2 && seen.has('p0') && seen.has('p2'))) {
    await sleep(200);
  }
  assert.equal(seen.get('p0'), 1);
  assert.equal(seen.get('p2'), 1);
  assert.equal(seen.get('p1'), 2, 'failed once, then delivered again');
});

test('bad input gets a clear error', async () => {
  await assert.rejects(producer.send({ topic: 'bad topic name!', body: Buffer.from('x') }));
  const c = simple(unique('node-bad'), new Map().set(unique('NodeBad'), '*'));
  await c.startup();
  const fake = { receiptHandle: 'not-a-handle', topic: 'NodeBad', messageId: '00', endpoints: (await c.receive(1, 1000))[0]?.endpoints };
  await assert.rejects(c.ack(fake));
});
