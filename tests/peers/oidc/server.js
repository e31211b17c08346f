// OpenID provider for flowgate's black-box tests: `oidc-provider` on loopback with one confidential
// client and two fixed accounts. Its login is a plain HTML form (no scripts, no browser needed) that
// a test drives with an HTTP client holding cookies; consent is granted together with the login.
//
// Environment:
//   PORT           port on 127.0.0.1 (default 0: any free port)
//   CLIENT_SECRET  secret of client `flowgate-test` (default `flowgate-test-secret`)
//   REDIRECT_URIS  comma-separated redirect URIs of that client (required)
//
// Prints exactly one JSON line `{"issuer": "...", "port": n}` on stdout once it accepts connections.
// Exits when stdin closes or the parent process goes away, so a test can never leak it.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const CLIENT_ID = 'flowgate-test';

// stdout carries only the one ready line; the provider's notices (console.info) go to stderr.
console.log = console.error; // eslint-disable-line no-console
console.info = console.error; // eslint-disable-line no-console

/** Standard claims of the fixed accounts, keyed by login name (which is also `sub`). */
const ACCOUNTS = {
  alice: {
    sub: 'alice',
    email: 'alice@example.test',
    email_verified: true,
    given_name: 'Alice',
    family_name: 'Liddell',
    name: 'Alice Liddell',
    preferred_username: 'alice',
  },
  bob: {
    sub: 'bob',
    email: 'bob@example.test',
    email_verified: false,
    given_name: 'Bob',
    family_name: 'Builder',
    name: 'Bob Builder',
    preferred_username: 'bob',
  },
};

function fail(message) {
  process.stderr.write(`oidc peer: ${message}\n`);
  process.exit(2);
}

const redirectUris = (process.env.REDIRECT_URIS ?? '')
  .split(',')
  .map((uri) => uri.trim())
  .filter((uri) => uri.length > 0);
if (redirectUris.length === 0) {
  fail('REDIRECT_URIS must name at least one redirect URI');
}
const clientSecret = process.env.CLIENT_SECRET || 'flowgate-test-secret';
const requestedPort = Number.parseInt(process.env.PORT ?? '0', 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  fail(`PORT must be a port number, got ${JSON.stringify(process.env.PORT)}`);
}

// A fresh signing key per run: tests must fetch the JWKS, never trust a key baked into the repository.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `test-${randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function configuration() {
  return {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      // A client registered for `client_secret_basic` may also send `client_secret_post` (the
      // provider accepts both secret methods for such a client), so connectors using either work.
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    pkce: { required: () => true, methods: ['S256'] },
    // Explicit lifetimes (seconds), long enough for any test and without the provider's notices.
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 600,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 3600,
    },
    scopes: ['openid', 'profile', 'email'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['given_name', 'family_name', 'name', 'preferred_username'],
    },
    // Put the scope's claims into the ID token as well, for IdPs configured with ID-token mapping.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const claims = ACCOUNTS[id];
      if (!claims) {
        return undefined;
      }
      return { accountId: id, async claims() { return { ...claims }; } };
    },
    async renderError(ctx, out) {
      ctx.type = 'application/json';
      ctx.body = JSON.stringify(out);
    },
  };
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) {
      throw new Error('form too large');
    }
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

/**
 * The minimal interaction routes:
 *   GET  /interaction/:uid        an HTML form posting `login` to /interaction/:uid/login
 *   POST /interaction/:uid/login  `login=<alice|bob>`: logs in and grants the requested scopes
 * Returns false for any other path so the provider handles it.
 */
async function interaction(provider, req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(url.pathname);
  if (!match) {
    return false;
  }
  const [, uid, login] = match;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'text/plain', 'interaction mismatch\n');
    return true;
  }
  if (!login) {
    if (req.method !== 'GET') {
      send(res, 405, 'text/plain', 'method not allowed\n');
      return true;
    }
    const page = `<!doctype html><title>Sign in</title>
<p>prompt: ${escapeHtml(details.prompt.name)}; client: ${escapeHtml(details.params.client_id)}</p>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<input name="login" autofocus> <button type="submit">Sign in</button>
</form>
`;
    send(res, 200, 'text/html; charset=utf-8', page);
    return true;
  }
  if (req.method !== 'POST') {
    send(res, 405, 'text/plain', 'method not allowed\n');
    return true;
  }
  const form = await readForm(req);
  const accountId = form.get('login') ?? '';
  if (!Object.hasOwn(ACCOUNTS, accountId)) {
    send(res, 400, 'text/plain', `unknown account ${JSON.stringify(accountId)}\n`);
    return true;
  }
  const clientId = details.params.client_id;
  // Consent is part of the login here: grant every requested scope and claim to the client at once,
  // so the provider resumes straight to the redirect URI.
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId });
  grant.addOIDCScope(String(details.params.scope ?? 'openid'));
  const missingClaims = details.prompt.details?.missingOIDCClaims;
  if (Array.isArray(missingClaims) && missingClaims.length > 0) {
    grant.addOIDCClaims(missingClaims);
  }
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
  return true;
}

const server = createServer();
server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration());
  const handle = provider.callback();
  server.on('request', (req, res) => {
    interaction(provider, req, res)
      .then((handled) => {
        if (!handled) {
          handle(req, res);
        }
      })
      .catch((err) => {
        process.stderr.write(`oidc peer: ${err?.stack ?? err}\n`);
        if (!res.headersSent) {
          send(res, 400, 'text/plain', `${err?.name ?? 'Error'}: ${err?.message ?? err}\n`);
        } else {
          res.end();
        }
      });
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
server.on('error', (err) => fail(`cannot listen: ${err.message}`));

// The parent holds our stdin: when it closes (the test dropped us or died), stop.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) {
    process.exit(0);
  }
}, 1000).unref();
