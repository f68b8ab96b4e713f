"""Webhook rules: event filters, signatures, retry schedule, URLs, and the addresses a delivery may reach."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import pytest

from controlplane.domain.models import AuditEvent
from controlplane.domain.webhook_targets import (
    AddressClass,
    TargetAllowlist,
    classify_address,
    embedded_ipv4,
    parse_webhook_url,
    refusal,
)
from controlplane.domain.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryOutcome,
    EventFilter,
    RetryPolicy,
    action_matches,
    bounded_error,
    delivery_headers,
    event_payload,
    new_secret,
    outcome_of_status,
    sign,
    validate_models,
    validate_patterns,
    validate_secret,
    verify,
)
from controlplane.errors import InvalidInput

# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ("*", "push", True),
        ("*", "rollout.create", True),
        ("push", "push", True),
        ("push", "push.extra", False),
        ("rollout.*", "rollout.create", True),
        ("rollout.*", "rollout.transition", True),
        ("rollout.*", "rollout", False),
        ("rollout.*", "rollouts.create", False),
        ("deploy", "rollout.create", False),
    ],
)
def test_an_action_pattern_is_the_action_a_family_or_everything(
    pattern: str, action: str, matches: bool
) -> None:
    assert action_matches(pattern, action) is matches


def test_a_filter_takes_an_event_matching_any_pattern() -> None:
    event_filter = EventFilter(("push", "rollout.*"))
    assert event_filter.matches(action="push", target="mlp/1", details={})
    assert event_filter.matches(action="rollout.create", target="mlp/2", details={})
    assert not event_filter.matches(action="token.create", target="ci", details={})


def test_a_model_list_keeps_the_events_whose_target_or_details_name_one_of_the_models() -> None:
    event_filter = EventFilter(("*",), ("mlp",))
    assert event_filter.matches(action="push", target="mlp/3", details={})
    assert event_filter.matches(action="policy.set", target="mlp", details={})
    assert event_filter.matches(action="rollout.transition", target="x", details={"model": "mlp"})
    assert not event_filter.matches(action="push", target="mlp2/1", details={})
    assert not event_filter.matches(action="push", target="other/1", details={})


def test_patterns_are_checked_and_deduplicated() -> None:
    assert validate_patterns(["push", "rollout.*", "push", "*"]) == ("push", "rollout.*", "*")
    for bad in (["roll*"], ["push; drop"], ["*.create"], [""], []):
        with pytest.raises(InvalidInput) as refused:
            validate_patterns(bad)
        assert refused.value.code == "invalid_webhook_events"


def test_models_are_checked_and_an_empty_list_is_refused() -> None:
    assert validate_models(None) is None
    assert validate_models(["mlp", "mlp", "resnet"]) == ("mlp", "resnet")
    with pytest.raises(InvalidInput) as empty:
        validate_models([])
    assert empty.value.code == "invalid_webhook_models"
    with pytest.raises(InvalidInput) as bad:
        validate_models(["../etc"])
    assert bad.value.code == "invalid_model_name"


def test_a_chosen_secret_is_long_and_printable_and_a_generated_one_is_fresh() -> None:
    assert validate_secret("s" * 16) == "s" * 16
    for bad in ("short", "x" * 257, "0123456789abcdef\n"):
        with pytest.raises(InvalidInput) as refused:
            validate_secret(bad)
        assert refused.value.code == "invalid_webhook_secret"
    one, two = new_secret(), new_secret()
    assert one != two and len(one) > 40 and one.startswith("whsec_")


# -- payload and signature -------------------------------------------------------------------

EVENT = AuditEvent(
    id=42,
    at=datetime(2026, 12, 5, 10, 30, tzinfo=UTC),
    actor="alice",
    action="push",
    target="mlp/3",
    outcome="created",
    details={"digest": "ab" * 32, "size": 3281},
)


def test_the_payload_carries_the_event_and_is_the_same_bytes_every_time() -> None:
    body = event_payload(EVENT)
    assert body == event_payload(EVENT)
    assert json.loads(body) == {
        "id": 42,
        "action": "push",
        "target": "mlp/3",
        "outcome": "created",
        "actor": "alice",
        "at": "2026-12-05T10:30:00+00:00",
        "details": {"digest": "ab" * 32, "size": 3281},
    }


def test_the_signature_is_the_hmac_sha256_of_timestamp_dot_body() -> None:
    # Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef
    assert sign("0123456789abcdef", 1700000000, b'{"a":1}') == (
        "sha256=9eb18f493f8ec135d9eb2dad817c369bb4e9cbfa818657897a7437c1cd8c3a23"
    )
    headers = delivery_headers("0123456789abcdef", event_id=42, timestamp=1700000000, body=b'{"a":1}')
    assert headers[EVENT_ID_HEADER] == "42"
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER] == sign("0123456789abcdef", 1700000000, b'{"a":1}')


def test_a_receiver_accepts_a_fresh_signed_body_and_refuses_a_changed_body_secret_or_an_old_timestamp() -> (
    None
):
    secret, body, ts = "0123456789abcdef", event_payload(EVENT), 1_700_000_000
    signature = sign(secret, ts, body)
    assert verify(secret, body=body, timestamp=str(ts), signature=signature, now=ts + 10)
    assert not verify(secret, body=body + b" ", timestamp=str(ts), signature=signature, now=ts)
    assert not verify("another-secret-16", body=body, timestamp=str(ts), signature=signature, now=ts)
    assert not verify(secret, body=body, timestamp=str(ts + 1), signature=signature, now=ts)
    assert not verify(secret, body=body, timestamp=str(ts), signature=signature, now=ts + 301)
    assert not verify(secret, body=body, timestamp="-1", signature=signature, now=ts)


# -- retries ----------------------------------------------------------------------------------


def test_the_retry_delay_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=300.0, jitter=0.2)
    assert [policy.delay(n, 0.0) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert policy.delay(500, 0.0) == 300


def test_jitter_takes_off_at_most_its_share_so_the_gaps_still_grow() -> None:
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=300.0, jitter=0.2)
    assert policy.delay(3, 0.999999) == pytest.approx(4 * 0.8, rel=1e-5)
    worst = [(policy.delay(n, 0.0), policy.delay(n + 1, 0.999999)) for n in range(1, 8)]
    assert all(longest < shortest_next for longest, shortest_next in worst)


def test_the_subscription_is_disabled_at_the_configured_number_of_failures() -> None:
    policy = RetryPolicy(max_failures=5)
    assert [policy.disables(n) for n in range(1, 7)] == [False, False, False, False, True, True]


def test_only_a_2xx_answer_delivers_and_a_redirect_is_a_failure() -> None:
    assert outcome_of_status(200) is DeliveryOutcome.DELIVERED
    assert outcome_of_status(204) is DeliveryOutcome.DELIVERED
    for status in (302, 307, 400, 404, 500, 503):
        assert outcome_of_status(status) is DeliveryOutcome.FAILED


def test_a_logged_error_is_one_bounded_line() -> None:
    assert bounded_error("a\nb\t c") == "a b c"
    assert len(bounded_error("x" * 10_000)) == 500


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.255.0.9", AddressClass.LOOPBACK),
        ("169.254.169.254", AddressClass.LINK_LOCAL),
        ("10.0.0.1", AddressClass.PRIVATE),
        ("172.16.5.4", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.SHARED),
        ("100.127.255.254", AddressClass.SHARED),
        ("224.0.0.251", AddressClass.MULTICAST),
        ("0.0.0.0", AddressClass.UNSPECIFIED),
        ("0.1.2.3", AddressClass.RESERVED),
        ("255.255.255.255", AddressClass.RESERVED),
        ("::1", AddressClass.LOOPBACK),
        ("::", AddressClass.UNSPECIFIED),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("febf::1", AddressClass.LINK_LOCAL),
        ("fc00::1", AddressClass.PRIVATE),
        ("fd12:3456::1", AddressClass.PRIVATE),
        ("ff02::1", AddressClass.MULTICAST),
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),
        ("::ffff:169.254.169.254", AddressClass.LINK_LOCAL),
        ("::ffff:10.0.0.1", AddressClass.PRIVATE),
        ("::ffff:a9fe:a9fe", AddressClass.LINK_LOCAL),
        ("::127.0.0.1", AddressClass.LOOPBACK),
        ("64:ff9b::a9fe:a9fe", AddressClass.LINK_LOCAL),
        ("2002:7f00:1::", AddressClass.LOOPBACK),
        ("2002:0a00:0001::1", AddressClass.PRIVATE),
    ],
)
def test_internal_addresses_and_their_ipv6_forms_are_refused_by_class(
    address: str, kind: AddressClass
) -> None:
    assert classify_address(ipaddress.ip_address(address)) is kind


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "2002:0808:0808::1",
    ],
)
def test_public_addresses_are_not_refused(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is None


def test_the_ipv4_address_an_ipv6_address_carries_is_found() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.IPv6Address("2002:0102:0304::")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) is None


def test_an_allowlisted_network_allows_its_addresses_and_their_mapped_form_only() -> None:
    allowlist = TargetAllowlist.parse(" 127.0.0.1 , 10.1.0.0/16, hooks.internal ,fd00::/8, [::1] ")
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowlist) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowlist) is None
    assert refusal(ipaddress.ip_address("10.1.200.3"), allowlist) is None
    assert refusal(ipaddress.ip_address("10.2.0.1"), allowlist) is AddressClass.PRIVATE
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowlist) is AddressClass.LOOPBACK
    assert refusal(ipaddress.ip_address("fd12::1"), allowlist) is None
    assert refusal(ipaddress.ip_address("::1"), allowlist) is None
    assert allowlist.allows_host("HOOKS.internal.")
    assert not allowlist.allows_host("other.internal")
    assert refusal(ipaddress.ip_address("169.254.169.254"), TargetAllowlist()) is AddressClass.LINK_LOCAL


def test_a_malformed_allowlist_entry_is_named() -> None:
    with pytest.raises(InvalidInput, match="'not a host!'") as refused:
        TargetAllowlist.parse("127.0.0.1,not a host!")
    assert refused.value.code == "invalid_webhook_allowlist"


# -- URLs ------------------------------------------------------------------------------------------


def test_a_url_keeps_host_port_and_path_and_pins_to_an_address_with_the_host_header_kept() -> None:
    url = parse_webhook_url("https://Hooks.Example.com/in/deploys?team=ml")
    assert (url.scheme, url.host, url.port, url.path) == (
        "https",
        "hooks.example.com",
        443,
        "/in/deploys?team=ml",
    )
    assert url.host_header == "hooks.example.com"
    assert url.pinned(ipaddress.ip_address("93.184.216.34")) == "https://93.184.216.34:443/in/deploys?team=ml"
    v6 = parse_webhook_url("http://[2606:4700::1111]:8080")
    assert v6.host == "2606:4700::1111" and v6.path == "/" and v6.host_is_address
    assert v6.host_header == "[2606:4700::1111]:8080"
    assert v6.pinned(ipaddress.ip_address("2606:4700::1111")) == "http://[2606:4700::1111]:8080/"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com",
        "http://",
        "http:///path",
        "https://user:pass@example.com/",
        "https://example.com/#frag",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\r\nX-Injected: 1",
        "https://" + "a" * 2100 + ".com/",
        "https://bad_host!.com/",
        "example.com/path",
    ],
)
def test_urls_of_the_wrong_form_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_webhook_url(url)
    assert refused.value.code == "invalid_webhook_url"
