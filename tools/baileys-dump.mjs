#!/usr/bin/env node
// Writes a Baileys auth state as one JSON file for `wapool adopt COMPANY --from-baileys FILE`:
//   {"creds": {...}, "keys": {"pre-key": {"1": {...}}, "app-state-sync-key": {...}, ...}}
// with bytes in Baileys' BufferJSON form ({"type": "Buffer", "data": "<base64>"}).
//
// From useMultiFileAuthState's folder:
//   node tools/baileys-dump.mjs --folder ./auth_info > acme.json
// From PostgreSQL (needs node-postgres: `npm install pg`), one row per creds/key, named as
// useMultiFileAuthState names its files ("creds", "pre-key-1", "app-state-sync-key-AAAA", ...):
//   PGPASSWORD=... node tools/baileys-dump.mjs --postgres 'postgres://bot@db/bots' \
//       --table auth_state --key-column key --value-column value \
//       [--session-column session_id --session acme] > acme.json
// The value column may be text (BufferJSON) or json/jsonb. Only SELECT is ever run, inside a
// READ ONLY transaction. The output holds private keys: write it somewhere private (umask 077)
// and delete it once adopted.
import { readdir, readFile } from 'fs/promises';
import { join } from 'path';
import { createRequire } from 'module';

const TYPES = ['app-state-sync-version', 'app-state-sync-key', 'sender-key-memory', 'identity-key',
  'device-list', 'lid-mapping', 'sender-key', 'pre-key', 'session', 'tctoken'];

function usage(message) {
  process.stderr.write(`baileys-dump: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (!flag.startsWith('--')) usage(`unexpected argument ${flag}`);
    const value = argv[i + 1];
    if (value === undefined || value.startsWith('--')) usage(`${flag} needs a value`);
    args[flag.slice(2)] = value;
    i++;
  }
  return args;
}

// Baileys' BufferJSON.reviver / replacer, without Baileys.
const reviver = (_, value) => {
  if (value && typeof value === 'object' && value.type === 'Buffer') {
    if (typeof value.data === 'string') return Buffer.from(value.data, 'base64');
    if (Array.isArray(value.data)) return Buffer.from(value.data);
  }
  return value;
};
const replacer = (_, value) => {
  if (Buffer.isBuffer(value) || value instanceof Uint8Array || value?.type === 'Buffer') {
    return { type: 'Buffer', data: Buffer.from(value?.data || value).toString('base64') };
  }
  return value;
};

// useMultiFileAuthState's file name -> (type, id): "/" was written "__" and ":" as "-".
function splitName(name) {
  if (name === 'creds') return ['creds', null];
  for (const type of TYPES) {
    if (name.startsWith(type + '-')) return [type, name.slice(type.length + 1).replace(/__/g, '/')];
  }
  return [null, null];
}

function add(state, name, value, skipped) {
  const [type, id] = splitName(name);
  if (type === 'creds') state.creds = value;
  else if (type) (state.keys[type] ??= {})[id] = value;
  else skipped.push(name);
}

async function fromFolder(folder) {
  const state = { creds: null, keys: {} };
  const skipped = [];
  for (const file of (await readdir(folder)).sort()) {
    if (!file.endsWith('.json')) continue;
    const text = await readFile(join(folder, file), 'utf-8');
    add(state, file.slice(0, -5), JSON.parse(text, reviver), skipped);
  }
  return [state, skipped];
}

async function fromPostgres(args) {
  for (const flag of ['table', 'key-column', 'value-column']) if (!args[flag]) usage(`--${flag} is required with --postgres`);
  if (!!args['session-column'] !== !!args.session) usage('--session-column and --session go together');
  let pg;
  try {
    pg = createRequire(join(process.cwd(), 'noop.js'))('pg');
  } catch {
    usage('node-postgres is missing: run `npm install pg` in this folder');
  }
  const ident = (name) => '"' + name.replace(/"/g, '""') + '"';
  const client = new pg.Client({ connectionString: args.postgres });
  await client.connect();
  const state = { creds: null, keys: {} };
  const skipped = [];
  try {
    await client.query('BEGIN TRANSACTION READ ONLY');
    let query = `SELECT ${ident(args['key-column'])} AS k, ${ident(args['value-column'])}::text AS v FROM ${args.table.split('.').map(ident).join('.')}`;
    const params = [];
    if (args.session) {
      query += ` WHERE ${ident(args['session-column'])} = $1`;
      params.push(args.session);
    }
    const result = await client.query(query, params);
    for (const row of result.rows) {
      if (row.v === null) continue;
      add(state, String(row.k).replace(/\.json$/, ''), JSON.parse(row.v, reviver), skipped);
    }
    await client.query('ROLLBACK');
  } finally {
    await client.end();
  }
  return [state, skipped];
}

const args = parseArgs(process.argv.slice(2));
if (!!args.folder === !!args.postgres) usage('give exactly one of --folder DIR or --postgres DSN');
try {
  const [state, skipped] = args.folder ? await fromFolder(args.folder) : await fromPostgres(args);
  if (!state.creds) usage('no creds found');
  if (skipped.length) process.stderr.write(`baileys-dump: skipped ${skipped.length} unknown entries (${skipped.slice(0, 3).join(', ')})\n`);
  const counts = Object.entries(state.keys).map(([t, v]) => `${Object.keys(v).length} ${t}`).join(', ');
  process.stderr.write(`baileys-dump: creds of ${state.creds.me?.id ?? '(never paired)'}; ${counts || 'no keys'}\n`);
  process.stdout.write(JSON.stringify(state, replacer) + '\n');
} catch (error) {
  process.stderr.write(`baileys-dump: ${String(error?.message ?? error).split('\n')[0]}\n`);
  process.exit(1);
}
