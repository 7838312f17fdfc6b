// Writes a Baileys auth state made by Baileys itself, as if a phone had linked it:
// initAuthCreds() for the device's keys, a "phone" key pair that signs the ADV account (as the
// phone does when linking), one-time pre-keys, app-state sync keys and versions, LID mappings.
// Saved through useMultiFileAuthState into FOLDER (the files a Baileys bot keeps), and printed
// on stdout as {creds, keys} in Baileys' BufferJSON form.
//   node baileys_state.mjs NODE_MODULES FOLDER PHONE_USER
import { createRequire } from 'module';
import path from 'path';
import { pathToFileURL } from 'url';

const [modules, folder, phoneUser] = process.argv.slice(2);
const baileys = await import(pathToFileURL(path.join(modules, 'baileys', 'lib', 'index.js')).href);
const { initAuthCreds, BufferJSON, useMultiFileAuthState, Curve, proto } = baileys;
const { randomBytes } = await import('crypto');

const creds = initAuthCreds();
const phone = Curve.generateKeyPair();
const details = proto.ADVDeviceIdentity.encode({ rawId: 7, timestamp: 1767225600, keyIndex: 3 }).finish();
const identityPub = creds.signedIdentityKey.public;
const accountSignature = Curve.sign(phone.private, Buffer.concat([Buffer.from([6, 0]), details, identityPub]));
const deviceSignature = Curve.sign(creds.signedIdentityKey.private,
  Buffer.concat([Buffer.from([6, 1]), details, identityPub, phone.public]));
creds.account = { details, accountSignatureKey: phone.public, accountSignature, deviceSignature };
creds.me = { id: `${phoneUser}:4@s.whatsapp.net`, lid: `9${phoneUser}:4@lid`, name: 'Salon Adopt' };
creds.platform = 'android';
creds.registered = true;

const keys = { 'pre-key': {}, 'app-state-sync-key': {}, 'app-state-sync-version': {}, 'lid-mapping': {} };
for (let id = 1; id <= 30; id++) keys['pre-key'][id] = Curve.generateKeyPair();
creds.nextPreKeyId = 31;
creds.firstUnuploadedPreKeyId = 26;
for (let i = 0; i < 3; i++) {
  const keyId = randomBytes(6).toString('base64');
  keys['app-state-sync-key'][keyId] = proto.Message.AppStateSyncKeyData.fromObject({
    keyData: randomBytes(32),
    fingerprint: { rawId: 100 + i, currentIndex: i, deviceIndexes: [0, i + 1] },
    timestamp: 1767225600000 + i,
  });
}
for (const name of ['critical_block', 'regular_high']) {
  const indexValueMap = {};
  for (let i = 0; i < 4; i++) indexValueMap[randomBytes(32).toString('base64')] = { valueMac: randomBytes(32) };
  keys['app-state-sync-version'][name] = { version: 12, hash: randomBytes(128), indexValueMap };
}
for (let i = 0; i < 3; i++) {
  keys['lid-mapping'][`5511900000${i}`] = `77700000${i}`;
  keys['lid-mapping'][`77700000${i}_reverse`] = `5511900000${i}`;
}
keys['session'] = { [`5511900000.0`]: randomBytes(64) };
keys['sender-key'] = { [`120363000000@g.us::5511900000::0`]: randomBytes(48) };

const { state, saveCreds } = await useMultiFileAuthState(folder);
Object.assign(state.creds, creds);
await saveCreds();
await state.keys.set(keys);
process.stdout.write(JSON.stringify({ creds: state.creds, keys }, BufferJSON.replacer));
