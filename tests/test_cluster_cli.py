"""``trio-realtime serve --cluster`` and ``[cluster]`` in the config file: the options, how
they are checked, and what the command says."""

from __future__ import annotations

import argparse
import importlib.util
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from trio_realtime.cli._common import CommandError
from trio_realtime.cli._serve import cluster_options, serve_actions, serve_settings
from trio_realtime.security import ConfigError, load_config


def settings(tmp_path: Path, toml: str | None = None, **flags: Any) -> argparse.Namespace:
    """The serve settings of *flags* (the others not given) and the config file *toml*."""
    config = None
    if toml is not None:
        path = tmp_path / "broker.toml"
        path.write_text(toml)
        config = load_config(path)
    args = argparse.Namespace(**dict.fromkeys(serve_actions()))
    for name, value in flags.items():
        setattr(args, name, value)
    return serve_settings(args, config)


def test_cluster_flags_make_cluster_options(tmp_path: Path) -> None:
    """--cluster (repeatable, or comma-separated), --node and --cluster-prefix."""
    options = cluster_options(
        settings(
            tmp_path,
            cluster=["nats://a:4222,nats://b:4222", "tls://c:4222"],
            node="eu-1",
            cluster_prefix="prod.tr",
        )
    )
    assert options is not None
    assert options.servers == ("nats://a:4222", "nats://b:4222", "tls://c:4222")
    assert (options.node, options.prefix) == ("eu-1", "prod.tr")
    default = cluster_options(settings(tmp_path, cluster=["nats://a:4222"]))
    assert default is not None
    assert default.node.rsplit("-", 1)[1].isdigit()  # host name and process id
    assert default.prefix == "tr"
    assert cluster_options(settings(tmp_path)) is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"node": "n"}, "--node is for a cluster"),
        ({"cluster_prefix": "p"}, "--cluster-prefix is for a cluster"),
        ({"cluster": ["http://a:1"]}, "expected nats://HOST"),
        ({"cluster": ["nats://a:1"], "node": "a b"}, "node name"),
        ({"cluster": ["nats://a:1"], "cluster_prefix": "a.>"}, "a.>"),
        ({"cluster": ["nats://a:1"], "cluster_tls_cert": "c.pem"}, "go together"),
        ({"cluster": ["nats://a:1"], "cluster_tls_ca": "missing.pem"}, "TLS files"),
    ],
)
def test_bad_cluster_flags_are_one_line_errors(
    tmp_path: Path, flags: dict[str, Any], message: str
) -> None:
    """A companion flag without --cluster, a bad URL, node name, prefix or TLS file."""
    with pytest.raises(CommandError, match=message.replace(".", r"\.").replace(">", r"\>")):
        cluster_options(settings(tmp_path, **flags))


def test_without_the_nats_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cluster without nats-py says which extra to install."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "nats" else find_spec(name)
    )
    with pytest.raises(CommandError, match=r"pip install 'trio-realtime\[nats\]'"):
        cluster_options(settings(tmp_path, cluster=["nats://a:1"]))


def test_cluster_tls_files(tmp_path: Path) -> None:
    """--cluster-tls-ca verifies the server; --cluster-tls-cert/-key present a client
    certificate."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("broker")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    options = cluster_options(
        settings(
            tmp_path,
            cluster=["tls://a:4222"],
            cluster_tls_ca=str(ca_file),
            cluster_tls_cert=str(cert_file),
            cluster_tls_key=str(key_file),
        )
    )
    assert options is not None
    assert isinstance(options.tls, ssl.SSLContext)
    assert options.tls.verify_mode == ssl.CERT_REQUIRED


def test_the_cluster_table(tmp_path: Path) -> None:
    """[cluster] sets the cluster's serve options (servers as one URL or a list; TLS files
    relative to the file); the command line wins."""
    toml = (
        '[cluster]\nservers = "nats://n:4222"\nnode = "file-node"\nprefix = "f"\n'
        'tls_ca = "ca.pem"\n'
    )
    found = settings(tmp_path, toml)
    assert found.cluster == ["nats://n:4222"]
    assert (found.node, found.cluster_prefix) == ("file-node", "f")
    assert found.cluster_tls_ca == str(tmp_path / "ca.pem")
    assert settings(tmp_path, toml, node="flag-node").node == "flag-node"
    listed = settings(tmp_path, '[cluster]\nservers = ["nats://a:1", "nats://b:2"]\n')
    assert listed.cluster == ["nats://a:1", "nats://b:2"]
    same = settings(tmp_path, '[server]\ncluster = ["nats://a:1"]\nnode = "n"\n')
    assert (same.cluster, same.node) == (["nats://a:1"], "n")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[cluster]\nserver = "nats://a:1"\n', "cluster.server: unknown key"),
        ("[cluster]\nservers = 4222\n", "cluster.servers: expected an array of URLs"),
        ("[cluster]\nnode = 1\n", "cluster.node: expected a string"),
        (
            '[server]\nnode = "a"\n[cluster]\nnode = "b"\n',
            r"cluster.node: given twice \(also as server.node\)",
        ),
        ('cluster = "nats://a:1"\n', "cluster: expected a table"),
    ],
)
def test_a_bad_cluster_table_is_one_line(tmp_path: Path, toml: str, message: str) -> None:
    """Mistakes in [cluster] name the key."""
    path = tmp_path / "broker.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
