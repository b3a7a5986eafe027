"""Moto server whose Lambda invocations are forwarded to `cargo lambda watch`.

Run with the test venv's python (moto[server]==5.1.22):

    python tests/aws/moto_bridge.py [--port N]

Arguments / environment:
  --port N                  port to listen on (127.0.0.1). Default: $MOTO_PORT.
                            0 picks a free port; the ready line reports it.
  DEPROV_LAMBDA_INVOKE_URL  base URL of cargo lambda watch's Invoke API,
                            e.g. http://127.0.0.1:9001 (required for invokes).
  DEPROV_LAMBDA_BINARIES    optional JSON object mapping a Lambda FunctionName
                            to the cargo binary name that cargo lambda watch
                            should run, e.g. {"deprov-test-abc-worker":"worker"}.
                            Names not in the map are forwarded unchanged.

Every invoke of a moto Lambda (direct Invoke, Step Functions `lambda:invoke`
or plain-ARN Task, SQS event source mapping) becomes
    POST $DEPROV_LAMBDA_INVOKE_URL/2015-03-31/functions/<binary>/invocations
with the event JSON as body. Note: the Lambda's own Environment variables are
NOT passed on; the functions get the environment cargo lambda watch was
started with.

Prints `MOTO_BRIDGE_READY port=<port>` on stdout once it accepts requests.
SIGTERM / SIGINT stop it.
"""

import argparse
import copy
import json
import os
import signal
import sys
import urllib.error
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=int(os.environ.get("MOTO_PORT", "0")))
args = parser.parse_args()

# Imported after argument parsing only to keep --help fast.
from moto.awslambda.models import LambdaFunction  # noqa: E402
from moto.stepfunctions.models import StateMachineInstance  # noqa: E402
from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint  # noqa: E402
from moto.moto_api import _internal as moto_api  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402

INVOKE_URL = os.environ.get("DEPROV_LAMBDA_INVOKE_URL", "").rstrip("/")
BINARIES = json.loads(os.environ.get("DEPROV_LAMBDA_BINARIES") or "{}")


def _invoke_lambda(self, event=None):
    """Replacement for LambdaFunction._invoke_lambda (which runs docker).

    moto expects (payload: str, errored: bool, logs: str). errored=True makes
    moto set `X-Amz-Function-Error: Handled`; Step Functions then takes the
    error name from payload["errorType"] (so Retry/Catch match e.g.
    "Deprov.Throttled"), and the SQS event source mapping leaves the
    messages on the queue instead of deleting them.
    """
    binary = BINARIES.get(self.function_name, self.function_name)
    url = f"{INVOKE_URL}/2015-03-31/functions/{binary}/invocations"
    body = json.dumps({} if event is None else event).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        # Generous timeout: cargo lambda watch compiles a binary on its first
        # invocation.
        with urllib.request.urlopen(req, timeout=900) as resp:
            payload = resp.read().decode()
            error = resp.headers.get("X-Amz-Function-Error")
    except urllib.error.HTTPError as e:  # non-2xx: treat as a function error
        payload = e.read().decode()
        error = "Unhandled"
    except OSError as e:  # invoke server down / unreachable
        payload, error = "", repr(e)
    if error:
        try:
            parsed = json.loads(payload)
            assert isinstance(parsed, dict) and "errorType" in parsed
        except Exception:  # make sure Step Functions sees an errorType
            payload = json.dumps(
                {"errorType": "Bridge.InvokeFailed", "errorMessage": f"{error}: {payload}"}
            )
    print(f"moto_bridge: invoke {self.function_name} -> {binary}: "
          f"{'ERROR ' + payload if error else 'ok'}", file=sys.stderr, flush=True)
    return payload, bool(error), ""


LambdaFunction._invoke_lambda = _invoke_lambda


def _state_machine_deepcopy(self, memo):
    """moto 5.1.22 bug (getmoto/moto#10077, fixed by #10093 in later releases):
    StartExecution deep-copies the state machine, which reaches every earlier
    execution (directly and via .backend) and dies on their thread locks, so
    every StartExecution after the first returns HTTP 500. Snapshot only the
    definition: share the backend, give the copy an empty executions list."""
    memo[id(self.executions)] = []
    if hasattr(self, "backend"):
        memo[id(self.backend)] = self.backend
    clone = self.__class__.__new__(self.__class__)
    memo[id(self)] = clone
    clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
    return clone


StateMachineInstance.__deepcopy__ = _state_machine_deepcopy


def _setup_heartbeat_endpoint(self, heartbeat_seconds):
    """moto 5.1.22 race: an SQS event source mapping invokes the worker inside
    SendMessage, so its SendTaskSuccess can arrive before the task sets up its
    heartbeat endpoint; the notification is then lost and the task waits out
    HeartbeatSeconds. On AWS the mapping polls asynchronously. An outcome that
    already arrived counts as the first heartbeat."""
    endpoint = _original_setup_heartbeat_endpoint(self, heartbeat_seconds)
    if self._outcome is not None:
        endpoint.notify()
    return endpoint


_original_setup_heartbeat_endpoint = CallbackEndpoint.setup_heartbeat_endpoint
CallbackEndpoint.setup_heartbeat_endpoint = _setup_heartbeat_endpoint

server = make_server(
    "127.0.0.1", args.port, DomainDispatcherApplication(create_backend_app), threaded=True
)
port = server.server_address[1]
# moto's Step Functions integrations call back into this server through
# boto3 at http://localhost:$MOTO_PORT, so it must be the real port.
os.environ["MOTO_PORT"] = str(port)
# Same as POST /moto-api/config {"stepfunctions":{"execute_state_machine":true}}
moto_api.moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True}})

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"MOTO_BRIDGE_READY port={port}", flush=True)
try:
    server.serve_forever()
except (KeyboardInterrupt, SystemExit):
    pass
