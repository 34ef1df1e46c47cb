"""Signer against the published Standard Webhooks test vectors, and its refusals.

The vectors come from the reference implementation's own tests:
standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
(DEFAULT_MSG_ID / DEFAULT_PAYLOAD / DEFAULT_SECRET, test_sign_function,
test_invalid_signature_raises_error and test_multi_sig_payload_is_valid;
commit 33d368b20c5543357f4f27fd13bed0703b8c5204).

Every refusal must be a SignatureError and nothing else: the API maps exactly that to
``401 invalid_signature``; any other exception type would become a 500.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from harmony.adapters.generic_http.signing import (
    SIGNATURE_HEADERS,
    SignatureError,
    Signer,
    new_secret,
)

# Published vector (test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# Published near miss (test_invalid_signature_raises_error): last byte differs.
VECTOR_WRONG_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
# Published decoys (test_multi_sig_payload_is_valid).
VECTOR_DECOYS = (
    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
)

BODY = b'{"id":"evt_1","type":"interaction.created","data":{"external_id":"chat-1"}}'


@pytest.fixture
def signer() -> Signer:
    return Signer(VECTOR_SECRET)


def fresh_headers(signer: Signer, body: bytes = BODY, **at: float) -> dict[str, str]:
    """Headers signed now, or ``at`` (timedelta keyword arguments) away from now."""
    return signer.headers("evt_1", body, at=datetime.now(UTC) + timedelta(**at))


# ------------------------------------------------------------------------------------------
# The published vectors


def test_signing_the_published_vector_gives_the_published_signature(signer: Signer) -> None:
    at = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)

    headers = signer.headers(VECTOR_MSG_ID, VECTOR_PAYLOAD, at=at)

    assert headers == {
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_the_secret_works_with_or_without_its_prefix() -> None:
    at = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    bare = Signer(VECTOR_SECRET.removeprefix("whsec_"))
    assert bare.headers(VECTOR_MSG_ID, VECTOR_PAYLOAD, at=at)["webhook-signature"] == (
        VECTOR_SIGNATURE
    )


def test_the_published_vector_is_refused_today_because_it_is_years_old(signer: Signer) -> None:
    headers = {
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    with pytest.raises(SignatureError, match="too old"):
        signer.verify(VECTOR_PAYLOAD, headers)


def test_the_published_near_miss_signature_is_refused(signer: Signer) -> None:
    headers = fresh_headers(signer, VECTOR_PAYLOAD)
    headers["webhook-signature"] = VECTOR_WRONG_SIGNATURE
    with pytest.raises(SignatureError, match="No matching signature"):
        signer.verify(VECTOR_PAYLOAD, headers)


def test_one_valid_signature_among_the_published_decoys_passes(signer: Signer) -> None:
    headers = fresh_headers(signer, VECTOR_PAYLOAD)
    valid = headers["webhook-signature"]
    headers["webhook-signature"] = " ".join([VECTOR_DECOYS[0], VECTOR_DECOYS[1], valid])
    signer.verify(VECTOR_PAYLOAD, headers)


def test_the_published_decoys_alone_are_refused(signer: Signer) -> None:
    headers = fresh_headers(signer, VECTOR_PAYLOAD)
    headers["webhook-signature"] = " ".join(VECTOR_DECOYS)
    with pytest.raises(SignatureError):
        signer.verify(VECTOR_PAYLOAD, headers)


# ------------------------------------------------------------------------------------------
# Round trips


def test_a_fresh_signature_verifies(signer: Signer) -> None:
    signer.verify(BODY, fresh_headers(signer))


def test_header_names_are_case_insensitive(signer: Signer) -> None:
    headers = {name.title(): value for name, value in fresh_headers(signer).items()}
    assert "Webhook-Signature" in headers
    signer.verify(BODY, headers)


def test_unrelated_headers_are_ignored(signer: Signer) -> None:
    headers = {**fresh_headers(signer), "content-type": "application/json", "x-other": "1"}
    signer.verify(BODY, headers)


def test_key_rotation_both_keys_sign_and_either_verifies() -> None:
    old, new = Signer(VECTOR_SECRET), Signer(new_secret())
    at = datetime.now(UTC)
    signatures = [s.headers("evt_1", BODY, at=at)["webhook-signature"] for s in (old, new)]
    headers = {**old.headers("evt_1", BODY, at=at), "webhook-signature": " ".join(signatures)}
    old.verify(BODY, headers)
    new.verify(BODY, headers)


def test_a_timestamp_within_five_minutes_either_way_passes(signer: Signer) -> None:
    signer.verify(BODY, fresh_headers(signer, minutes=-4, seconds=-50))
    signer.verify(BODY, fresh_headers(signer, minutes=4, seconds=50))


def test_new_secret_is_32_random_bytes_in_whsec_form() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    signer = Signer(first)
    signer.verify(BODY, fresh_headers(signer))


@pytest.mark.parametrize("secret", ["whsec_", ""])
def test_an_unusable_secret_is_a_value_error(secret: str) -> None:
    with pytest.raises(ValueError, match="invalid webhook secret"):
        Signer(secret)


def test_a_non_utc_signing_time_signs_the_same_instant(signer: Signer) -> None:
    at = datetime.now(UTC).astimezone(timezone(timedelta(hours=2)))
    signer.verify(BODY, signer.headers("evt_1", BODY, at=at))


# ------------------------------------------------------------------------------------------
# Refusals: always SignatureError


def test_a_tampered_body_is_refused(signer: Signer) -> None:
    headers = fresh_headers(signer)
    with pytest.raises(SignatureError):
        signer.verify(BODY.replace(b"chat-1", b"chat-2"), headers)


def test_a_different_message_id_is_refused(signer: Signer) -> None:
    headers = {**fresh_headers(signer), "webhook-id": "evt_2"}
    with pytest.raises(SignatureError):
        signer.verify(BODY, headers)


def test_a_different_timestamp_is_refused(signer: Signer) -> None:
    headers = fresh_headers(signer)
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(SignatureError):
        signer.verify(BODY, headers)


def test_the_wrong_secret_is_refused(signer: Signer) -> None:
    with pytest.raises(SignatureError):
        Signer(new_secret()).verify(BODY, fresh_headers(signer))


@pytest.mark.parametrize(
    "offset", [{"minutes": -5, "seconds": -10}, {"minutes": 5, "seconds": 10}, {"days": -1}]
)
def test_a_timestamp_more_than_five_minutes_away_is_refused(
    signer: Signer, offset: dict[str, float]
) -> None:
    with pytest.raises(SignatureError, match=r"too (old|new)"):
        signer.verify(BODY, fresh_headers(signer, **offset))


@pytest.mark.parametrize("missing", SIGNATURE_HEADERS)
def test_a_missing_header_is_refused_by_name(signer: Signer, missing: str) -> None:
    headers = fresh_headers(signer)
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        signer.verify(BODY, headers)


@pytest.mark.parametrize("empty", SIGNATURE_HEADERS)
def test_an_empty_header_is_refused(signer: Signer, empty: str) -> None:
    headers = {**fresh_headers(signer), empty: ""}
    with pytest.raises(SignatureError, match=empty):
        signer.verify(BODY, headers)


@pytest.mark.parametrize(
    "signature",
    [
        "v1",  # no comma
        "v1,",  # empty signature
        ",",
        "v1,a,b",  # too many parts
        "v1,!!!!",  # not base64 at all
        "v1,abc",  # bad base64 padding
        "v1,Zm9v",  # valid base64, wrong length
        "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",  # unknown version only
        "   ",
        "v1 v1",
        "garbage",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= junk",  # junk after a wrong one
    ],
)
def test_a_garbage_signature_header_is_refused(signer: Signer, signature: str) -> None:
    headers = {**fresh_headers(signer), "webhook-signature": signature}
    with pytest.raises(SignatureError):
        signer.verify(BODY, headers)


@pytest.mark.parametrize("timestamp", ["hello", "nan", "inf", "-inf", "1e400", "12:00", "0x10"])
def test_a_garbage_timestamp_is_refused(signer: Signer, timestamp: str) -> None:
    headers = {**fresh_headers(signer), "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError):
        signer.verify(BODY, headers)


def test_a_body_that_is_not_utf8_is_refused(signer: Signer) -> None:
    headers = fresh_headers(signer)
    with pytest.raises(SignatureError):
        signer.verify(b"\xff\xfe" + BODY, headers)


def test_a_signature_error_names_no_secret(signer: Signer) -> None:
    with pytest.raises(SignatureError) as caught:
        signer.verify(BODY + b"x", fresh_headers(signer))
    assert VECTOR_SECRET.removeprefix("whsec_") not in str(caught.value)
