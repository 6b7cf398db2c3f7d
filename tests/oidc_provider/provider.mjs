// A real, certified OpenID Provider (panva/oidc-provider) for Sekisho's federation tests.
//
//   node provider.mjs --port 0 --config config.json
//
// Prints one line `READY <issuer>` on stdout when listening (port 0 picks a free port).
// config.json: { "clients": [client metadata…], "users": { login: {…claims, amr, acr} },
//                "alg": "RS256" }
// Users sign in on /interaction/<uid> with their login and the password "pw"; the consent
// page grants the requested scopes. Test-only admin endpoints (loopback only):
//   POST /__test/rotate   new signing key first in the JWKS (the old one stays published)
//   GET  /__test/kids     {"kids": [...]} the published key ids, signing key first
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: { port: { type: 'string', default: '0' }, config: { type: 'string' } },
});
const config = args.config ? JSON.parse(readFileSync(args.config, 'utf8')) : {};
const users = config.users ?? {};
const alg = config.alg ?? 'RS256';
const keys = [newKey()];

function newKey() {
  const options = alg.startsWith('ES') ? { namedCurve: 'P-256' } : { modulusLength: 2048 };
  const { privateKey } = generateKeyPairSync(alg.startsWith('ES') ? 'ec' : 'rsa', options);
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg, use: 'sig' };
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, title, body) {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><title>${escape(title)}</title></head><body>${body}</body></html>`);
}

async function formBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients ?? [],
    jwks: { keys },
    findAccount: async (ctx, id) => {
      const user = users[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          const { password, ...claims } = user; // amr / acr as the login asserted them
          return { sub: id, ...claims };
        },
      };
    },
    claims: {
      openid: ['sub', 'acr', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['name', 'groups'],
    },
    conformIdTokenClaims: false, // scope claims go into the ID token (as Entra / Google do)
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      claimsParameter: { enabled: true },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    // oidc-provider refuses to call special-use addresses (SSRF protection); the test RP
    // (Sekisho's back-channel logout endpoint) lives on 127.0.0.1, so this harness allows it.
    fetch: (url, { dispatcher, ...options }) => globalThis.fetch(url, options),
    cookies: { keys: ['sekisho-test-cookie-key'] },
    ttl: { Session: 3600, Interaction: 600, Grant: 3600, IdToken: 300, AuthorizationCode: 60, AccessToken: 300 },
  });
  provider.proxy = false;
  provider.on('backchannel.success', (ctx, client) => console.error(`backchannel.success ${client.clientId}`));
  provider.on('backchannel.error', (ctx, error, client) => console.error(`backchannel.error ${client.clientId}: ${error.message}`));
  provider.on('server_error', (ctx, error) => console.error(`server_error: ${error.stack}`));
  return provider;
}

let provider;
let issuer;

async function interaction(req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([\w-]+)(\/login|\/confirm)?$/);
  const details = await provider.interactionDetails(req, res);
  if (!match || details.uid !== match[1]) throw new Error('interaction mismatch');
  const step = match[2];
  if (req.method === 'GET' && !step) {
    if (details.prompt.name === 'login') {
      return page(res, 'Sign-in', `<h1>Sign-in</h1>
        <form method="post" action="/interaction/${escape(details.uid)}/login">
        <input name="login"><input name="password" type="password"><button>Sign in</button></form>`);
    }
    return page(res, 'Consent', `<h1>Authorize ${escape(details.params.client_id)}</h1>
      <form method="post" action="/interaction/${escape(details.uid)}/confirm"><button>Continue</button></form>`);
  }
  if (req.method === 'POST' && step === '/login') {
    const form = await formBody(req);
    const login = form.get('login') ?? '';
    const user = users[login];
    if (!user || form.get('password') !== (user.password ?? 'pw')) {
      return page(res, 'Sign-in', '<p id="error">invalid login</p>');
    }
    const result = { login: { accountId: login, amr: user.amr, acr: user.acr } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && step === '/confirm') {
    const { prompt: { details: missing }, params, session: { accountId } } = details;
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }
  res.writeHead(405).end();
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname === '/__test/rotate' && req.method === 'POST') {
      keys.unshift(newKey());
      provider = build(issuer);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ kid: keys[0].kid }));
    }
    if (url.pathname === '/__test/kids') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    }
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    return provider.callback()(req, res);
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`provider test harness error: ${error.message}`);
  }
});

server.listen(Number(args.port), '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build(issuer);
  process.stdout.write(`READY ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
