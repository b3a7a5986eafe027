"""moto's server with the IAM service-specific credential calls it lacks, and its
SigV4 check fixed for free-text bodies.

moto 5 answers Create/List/DeleteServiceSpecificCredential with a 500; real IAM has them
(https://docs.aws.amazon.com/IAM/latest/APIReference/API_ListServiceSpecificCredentials.html).
This keeps them in memory, per user, with the documented shapes and errors, then runs
moto's server with the given arguments.

moto recomputes the signature of a form body from its decoded parameters, so a request
carrying an SSH public key, a certificate or a policy document ('+', '/', '=', newlines)
never matches. Those requests (only the tests' seeding makes them) skip the signature
check; every other request is verified as AWS would.
"""

import datetime
import secrets
import sys

from moto.core.responses import ActionResult, EmptyResult
from moto.iam.exceptions import NotFoundException
from moto.iam.access_control import IAMRequestBase
from moto.iam.responses import IamResponse

_FREE_TEXT = ("SSHPublicKeyBody", "CertificateBody", "PolicyDocument")
_check_signature = IAMRequestBase.check_signature


def check_signature(self):
    if any(name in self._data for name in _FREE_TEXT):
        return
    _check_signature(self)


IAMRequestBase.check_signature = check_signature

_CREDENTIALS = {}  # (account, user) -> {id: metadata}


def _store(self, user_name):
    self.backend.get_user(user_name)  # NoSuchEntity when the user is gone
    return _CREDENTIALS.setdefault((self.current_account, user_name), {})


def create_service_specific_credential(self):
    user_name = self._get_param("UserName")
    service = self._get_param("ServiceName")
    store = _store(self, user_name)
    credential_id = "ACCA" + secrets.token_hex(8).upper()
    metadata = {
        "UserName": user_name,
        "Status": "Active",
        "ServiceUserName": f"{user_name}-at-{secrets.randbelow(10**6)}",
        "CreateDate": datetime.datetime.now(datetime.timezone.utc),
        "ServiceSpecificCredentialId": credential_id,
        "ServiceName": service,
    }
    store[credential_id] = metadata
    return ActionResult(
        {"ServiceSpecificCredential": dict(metadata, ServicePassword=secrets.token_urlsafe(24))}
    )


def list_service_specific_credentials(self):
    store = _store(self, self._get_param("UserName"))
    return ActionResult(
        {"ServiceSpecificCredentials": list(store.values()), "IsTruncated": False}
    )


def delete_service_specific_credential(self):
    store = _store(self, self._get_param("UserName"))
    credential_id = self._get_param("ServiceSpecificCredentialId")
    if store.pop(credential_id, None) is None:
        raise NotFoundException(f"No such credential {credential_id}")
    return EmptyResult()


IamResponse.create_service_specific_credential = create_service_specific_credential
IamResponse.list_service_specific_credentials = list_service_specific_credentials
IamResponse.delete_service_specific_credential = delete_service_specific_credential

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
