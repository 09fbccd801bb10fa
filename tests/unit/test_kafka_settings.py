"""Kafka connection settings from the environment: TLS (mTLS) and SASL for both the
aiokafka clients and faust, and one-line errors for bad values."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.kernel.config import KafkaSettings, load_settings
from services.kernel.errors import CliError


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A client certificate and key, as Strimzi's KafkaUser secret would hold them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedscreen-intake")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "user.crt", tmp_path / "user.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_mutual_tls_from_mounted_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(cert))  # any PEM CA bundle will do here
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", str(cert))
    monkeypatch.setenv("KAFKA_SSL_KEYFILE", str(key))
    settings = load_settings(KafkaSettings)
    kwargs = settings.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert "sasl_mechanism" not in kwargs
    faust_kwargs = settings.faust_broker_kwargs()
    assert faust_kwargs["broker"] == ["kafka://kafka-0:9093", "kafka://kafka-1:9093"]
    assert faust_kwargs["broker_credentials"].context is not None


def test_scram_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "fedscreen-prescreen")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = load_settings(KafkaSettings)
    kwargs = settings.aiokafka_kwargs()
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "fedscreen-prescreen",
    )
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    credentials = settings.faust_broker_kwargs()["broker_credentials"]
    assert (credentials.username, credentials.mechanism.value) == (
        "fedscreen-prescreen",
        "SCRAM-SHA-512",
    )
    assert credentials.ssl_context is not None


def test_plaintext_has_no_tls_or_sasl() -> None:
    kwargs = KafkaSettings().aiokafka_kwargs()
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in kwargs and "sasl_mechanism" not in kwargs


def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(CliError) as caught:
        load_settings(KafkaSettings)
    message = str(caught.value)
    assert "KAFKA_SECURITY_PROTOCOL" in message and "\n" not in message
