// A DPoP client nobody here wrote calling the demo: panva's oauth4webapi signs an RFC 9449 proof
// for every resource request itself (htm, htu, iat, jti, ath, and the server's nonce after a
// `use_dpop_nonce` challenge), and discovers the resource's RFC 9728 metadata.
//
// Environment: RESOURCE (the demo's RESOURCE_URL), TOKEN (an access token bound to the key),
// KEY_PEM (the path of the client's PKCS#8 P-256 private key). Prints one JSON line per step and
// exits non-zero on the first unexpected answer.
import { readFileSync } from 'node:fs';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import * as oauth from 'oauth4webapi';

const { RESOURCE, TOKEN, KEY_PEM } = process.env;
const resource = new URL(RESOURCE);
const insecure = { [oauth.allowInsecureRequests]: true };

const pem = readFileSync(KEY_PEM);
const ec = { name: 'ECDSA', namedCurve: 'P-256' };
const privateJwk = createPrivateKey(pem).export({ format: 'jwk' });
const publicJwk = createPublicKey(pem).export({ format: 'jwk' });
const keyPair = {
  privateKey: await crypto.subtle.importKey('jwk', privateJwk, ec, false, ['sign']),
  publicKey: await crypto.subtle.importKey('jwk', publicJwk, ec, true, ['verify']),
};
const DPoP = oauth.DPoP({}, keyPair);

function report(step, value) {
  console.log(JSON.stringify({ step, ...value }));
}

function fail(step, detail) {
  report(step, { ok: false, detail: String(detail) });
  process.exit(1);
}

// A request as an application makes it: retried once when the server asks for a nonce (the
// handle has cached the one the 401 carried).
async function request(method, path) {
  const url = new URL(path, resource);
  for (let attempt = 0; ; attempt++) {
    try {
      return { response: await oauth.protectedResourceRequest(TOKEN, method, url, undefined, undefined, { DPoP, ...insecure }), attempt };
    } catch (err) {
      if (oauth.isDPoPNonceError(err) && attempt === 0) {
        continue;
      }
      return { err, attempt };
    }
  }
}

// RFC 9728 discovery, validated by the library (the `resource` must be the identifier asked for).
const discovery = await oauth.resourceDiscoveryRequest(resource, insecure);
const metadata = await oauth.processResourceDiscoveryResponse(resource, discovery);
report('metadata', {
  ok: metadata.dpop_bound_access_tokens_required === true,
  resource: metadata.resource,
  algs: metadata.dpop_signing_alg_values_supported,
});

const me = await request('GET', '/me');
if (!me.response || me.response.status !== 200) {
  fail('me', me.err ?? me.response.status);
}
const body = await me.response.json();
report('me', { ok: true, sub: body.sub, nonce_retry: me.attempt === 1 });

const logout = await request('POST', '/logout');
if (!logout.response || logout.response.status !== 204) {
  fail('logout', logout.err ?? logout.response.status);
}
report('logout', { ok: true });

const after = await request('GET', '/me');
const challenge = after.err?.cause?.find?.((c) => c.scheme === 'dpop');
if (!challenge || challenge.parameters.error !== 'invalid_token') {
  fail('revoked', after.err ?? after.response?.status);
}
report('revoked', { ok: true, error: challenge.parameters.error, description: challenge.parameters.error_description });
