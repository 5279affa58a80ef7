// An independent Privacy Pass (type 0x0002) and RFC 9474 peer for the Python tests: Cloudflare's
// @cloudflare/privacypass-ts and @cloudflare/blindrsa-ts, driven over stdin/stdout.
//
// One JSON object per line in, one per line out: {"op": ..., ...} -> {...} or {"error": "..."}.
// Byte strings travel as standard base64. State (a client waiting for its response, the issuer
// key this process made, a blinded message's inv) lives in this process until it exits.
//
//   node tests/interop/peer.mjs      (tests/crypto/test_privacy_pass_interop.py starts it)

import { createInterface } from 'node:readline';
import { webcrypto } from 'node:crypto';

import {
    AuthorizationHeader,
    TOKEN_TYPES,
    TokenChallenge,
    WWWAuthenticateHeader,
    publicVerif,
} from '@cloudflare/privacypass-ts';
import { RSABSSA } from '@cloudflare/blindrsa-ts';

// node 18 (Debian's) keeps WebCrypto off the global object; node >= 19 has it there
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const { BlindRSAMode, Client, Issuer, Origin, TokenRequest, TokenResponse, getPublicKeyBytes, convertRSASSAPSSToEnc } =
    publicVerif;
const MODE = BlindRSAMode.PSS; // RSABSSA-SHA384-PSS-Deterministic, salt 48
const RSA_PSS_SHA384 = { name: 'RSA-PSS', hash: 'SHA-384' };

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));
const b64 = (u8) => Buffer.from(u8).toString('base64');
const importTokenKey = (spki) =>
    crypto.subtle.importKey('spki', convertRSASSAPSSToEnc(spki), RSA_PSS_SHA384, true, ['verify']);

const clients = new Map(); // id -> Client with its pending request
const blinds = new Map(); // id -> inv of a raw RFC 9474 blind
let issuer; // { issuer: Issuer, publicKey: CryptoKey }
let nextId = 1;

const ops = {
    // privacypass-ts as the client: a TokenRequest for our challenge and token key
    async client_request({ challenge, token_key }) {
        const client = new Client(MODE);
        const request = await client.createTokenRequest(TokenChallenge.deserialize(bytes(challenge)), bytes(token_key));
        const id = nextId++;
        clients.set(id, client);
        return { id, token_request: b64(request.serialize()) };
    },
    // ... finalizes with our issuer's TokenResponse, and its Origin verifies the token
    async client_finalize({ id, token_response, token_key }) {
        const client = clients.get(id);
        clients.delete(id);
        const token = await client.finalize(TokenResponse.deserialize(bytes(token_response)));
        const verifies = await new Origin(MODE).verify(token, await importTokenKey(bytes(token_key)));
        return {
            token: b64(token.serialize()),
            authorization: new AuthorizationHeader(token).toString(true),
            origin_verifies: verifies,
        };
    },
    // how privacypass-ts reads our WWW-Authenticate value
    async parse_www_authenticate({ header }) {
        return WWWAuthenticateHeader.parse(header).map((c) => ({
            challenge: b64(c.challenge.serialize()),
            token_key: b64(c.tokenKey),
            max_age: c.maxAge ?? null,
        }));
    },
    // privacypass-ts as the issuer: a fresh 2048-bit key and a challenge naming it
    async issuer_new({ issuer_name, origin_info }) {
        const keys = await Issuer.generateKey(MODE, { modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) });
        issuer = { issuer: new Issuer(MODE, issuer_name, keys.privateKey, keys.publicKey), publicKey: keys.publicKey };
        const spki = await getPublicKeyBytes(keys.publicKey);
        const challenge = new TokenChallenge(TOKEN_TYPES.BLIND_RSA.value, issuer_name, new Uint8Array(0), origin_info);
        return {
            www_authenticate: new WWWAuthenticateHeader(challenge, spki).toString(true),
            token_key: b64(spki),
            token_key_id: b64(await issuer.issuer.tokenKeyID()),
        };
    },
    async issuer_issue({ token_request }) {
        const request = TokenRequest.deserialize(TOKEN_TYPES.BLIND_RSA, bytes(token_request));
        return { token_response: b64((await issuer.issuer.issue(request)).serialize()) };
    },
    // its Origin verifies a token our client finalized, as sent in our Authorization value
    async origin_verify({ authorization }) {
        const parsed = AuthorizationHeader.parse(TOKEN_TYPES.BLIND_RSA, authorization);
        if (parsed.length !== 1) throw new Error(`expected one token, parsed ${parsed.length}`);
        return { verifies: await new Origin(MODE).verify(parsed[0].token, issuer.publicKey) };
    },
    // privacypass-ts as a customer of a running anonticket, over HTTP: the check's 401
    // challenge (the one for token_key), the issuer directory, one issuance request through the
    // issuer route (Bearer + Idempotency-Key), finalize; its Origin verifies the token
    async http_fetch_token({ check_url, directory_url, bearer, idempotency_key, token_key }) {
        const refused = await fetch(check_url);
        const header = refused.headers.get('www-authenticate');
        const challenges = WWWAuthenticateHeader.parse(header);
        const chosen = challenges.find((c) => b64(c.tokenKey) === token_key);
        if (!chosen) throw new Error(`no challenge for the key among ${challenges.length}`);
        const directory = await (await fetch(directory_url)).json();
        const issuerUri = new URL(directory['issuer-request-uri'], directory_url).toString();
        const client = new Client(MODE);
        const request = await client.createTokenRequest(chosen.challenge, chosen.tokenKey);
        const answer = await fetch(issuerUri, {
            method: 'POST', body: request.serialize(),
            headers: { 'Content-Type': 'application/private-token-request',
                       'Authorization': `Bearer ${bearer}`, 'Idempotency-Key': idempotency_key },
        });
        if (answer.status !== 200) throw new Error(`the issuer answered ${answer.status}: ${await answer.text()}`);
        const token = await client.finalize(TokenResponse.deserialize(new Uint8Array(await answer.arrayBuffer())));
        const verifies = await new Origin(MODE).verify(token, await importTokenKey(chosen.tokenKey));
        return {
            authorization: new AuthorizationHeader(token).toString(true),
            origin_verifies: verifies,
            challenges: challenges.length,
            status: refused.status,
        };
    },
    // its Origin verifies a token against a given token key (SPKI)
    async origin_verify_key({ authorization, token_key }) {
        const parsed = AuthorizationHeader.parse(TOKEN_TYPES.BLIND_RSA, authorization);
        if (parsed.length !== 1) throw new Error(`expected one token, parsed ${parsed.length}`);
        return { verifies: await new Origin(MODE).verify(parsed[0].token, await importTokenKey(bytes(token_key))) };
    },
    // raw RFC 9474 with blindrsa-ts (any modulus size): keys as standard DER SPKI / PKCS#8
    async rsabssa_blind({ spki, msg }) {
        const suite = RSABSSA.SHA384.PSS.Deterministic();
        const publicKey = await crypto.subtle.importKey('spki', bytes(spki), RSA_PSS_SHA384, true, ['verify']);
        const { blindedMsg, inv } = await suite.blind(publicKey, bytes(msg));
        const id = nextId++;
        blinds.set(id, inv);
        return { id, blinded_msg: b64(blindedMsg) };
    },
    async rsabssa_finalize({ id, spki, msg, blind_sig }) {
        const suite = RSABSSA.SHA384.PSS.Deterministic();
        const publicKey = await crypto.subtle.importKey('spki', bytes(spki), RSA_PSS_SHA384, true, ['verify']);
        const inv = blinds.get(id);
        blinds.delete(id);
        return { sig: b64(await suite.finalize(publicKey, bytes(msg), bytes(blind_sig), inv)) };
    },
    async rsabssa_blind_sign({ pkcs8, blinded_msg }) {
        const suite = RSABSSA.SHA384.PSS.Deterministic();
        const privateKey = await crypto.subtle.importKey('pkcs8', bytes(pkcs8), RSA_PSS_SHA384, true, ['sign']);
        return { blind_sig: b64(await suite.blindSign(privateKey, bytes(blinded_msg))) };
    },
    async rsabssa_verify({ spki, msg, sig }) {
        const suite = RSABSSA.SHA384.PSS.Deterministic();
        const publicKey = await crypto.subtle.importKey('spki', bytes(spki), RSA_PSS_SHA384, true, ['verify']);
        return { verifies: await suite.verify(publicKey, bytes(sig), bytes(msg)) };
    },
};

// answer in order, one request at a time: the Python side waits for each answer
let queue = Promise.resolve();
createInterface({ input: process.stdin }).on('line', (line) => {
    queue = queue.then(async () => {
        let answer;
        try {
            const request = JSON.parse(line);
            const op = ops[request.op];
            if (!op) throw new Error(`unknown op ${request.op}`);
            answer = await op(request);
        } catch (error) {
            answer = { error: String(error && error.stack ? error.stack : error) };
        }
        process.stdout.write(JSON.stringify(answer) + '\n');
    });
});
