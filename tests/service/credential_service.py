"""A protected service that checks anonticket credentials by itself: the shipped verifier,
built once from the published key document, and the standard library's HTTP server.

    python credential_service.py https://tickets.example.org/.well-known/anonticket-credential-keys

It prints the port it listens on (127.0.0.1), then answers every GET with 200 and the
credential's subject, or 401 and the verifier's reason. Nothing in it talks to anonticket
after start-up: tests/service/test_offline_verification.py stops anonticket and keeps asking.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.request import urlopen

from anonticket.crypto.credential import CredentialError, CredentialVerifier

verifier = CredentialVerifier.from_key_document(urlopen(sys.argv[1], timeout=10).read())


class Protected(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            credential = verifier.verify(self.headers.get("Authorization", "")[len("Bearer "):])
            status, body = 200, {"subject": credential.subject}
        except CredentialError as error:  # error.code may be logged; the credential never
            status, body = 401, {"error": error.code}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass  # a request line would be fine here, but nothing needs it


server = ThreadingHTTPServer(("127.0.0.1", 0), Protected)
print(server.server_address[1], flush=True)
server.serve_forever()
