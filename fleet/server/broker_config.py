"""The text of the embedded Mosquitto's config and ACL, and what an external broker must match.

Kept apart from the process supervision in `broker.py` so the settings can be read, quoted in the
README and unit-tested without starting anything.

Why these limits (measured on Mosquitto 2.0.11, see tests/server/test_broker.py):
Mosquitto holds, per client, at most `max_inflight_messages` QoS 1 messages awaiting PUBACK and
`max_queued_messages` more behind them, and *silently drops* anything beyond (default 20 and 1000).
A fleet ingest that falls behind for a second at 5,000 msg/s, or restarts, overruns that at once.
Measured with defaults and a burst of 20,000 QoS 1 messages: a persistent subscriber that was
offline received 1,000 (19,000 lost); one that stalled for 2.5 s received 1,020 (20 in flight +
1,000 queued). With the values below it received all 20,000 in both cases. Only the
server's own session ever builds a large queue (a terminal receives a retained desired document
and the odd command), so the queue is unlimited and the memory bound is the server's session
expiry, which the ingest chooses. `max_queued_bytes` stays 0 (no limit) for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The MQTT topics each terminal may write / read; `%u` is its username, which is its terminal id.
TERMINAL_WRITE_TOPICS = ("presence", "status", "event", "reported", "cmd/result")
TERMINAL_READ_TOPICS = ("desired", "cmd")


@dataclass(frozen=True)
class QueueLimits:
    """Per-client queue settings of the embedded broker (0 means no limit, as in Mosquitto)."""

    #: QoS 1 messages queued behind the in-flight window. 0: never drop a message for the server.
    max_queued_messages: int = 0
    #: The same bound in payload bytes; 0 as well, or it would drop messages just the same.
    max_queued_bytes: int = 0
    #: QoS 1 messages sent but not yet acknowledged, per client. 100 keeps a loopback subscriber
    #: busy (a round trip costs far less than 100 deliveries) while bounding the redeliveries after
    #: a reconnect. A v5 client lowers it for itself with its Receive Maximum.
    max_inflight_messages: int = 100


#: Mosquitto's own defaults: what a hand-written config gets, and what drops messages.
MOSQUITTO_DEFAULT_LIMITS = QueueLimits(max_queued_messages=1000, max_inflight_messages=20)

#: The largest message payload a client may publish (Mosquitto `message_size_limit`). Bigger ones
#: are dropped by the broker, which still completes the QoS flow (a v5 client gets PUBACK 0x95,
#: "packet too large"): no subscriber ever sees them, so no single publish can wedge the ingest.
#: Four times the ingest's own payload limit (validate.MAX_PAYLOAD_BYTES, 64 KiB), so a payload
#: between the two reaches the ingest and is dead-lettered with its reason, where operators see it.
MESSAGE_SIZE_LIMIT = 256 * 1024
#: The largest MQTT packet of any kind (Mosquitto `max_packet_size`): a client sending a bigger
#: one is disconnected. Above MESSAGE_SIZE_LIMIT plus any topic and properties, so a large
#: PUBLISH is answered with PUBACK 0x95 (the agent drops it) rather than a disconnect (after
#: which an agent would resend it from its outbox for ever).
MAX_PACKET_SIZE = 512 * 1024

#: How often (s) Mosquitto writes its in-memory state (sessions, queued QoS 1 messages, retained
#: messages) to mosquitto.db. A clean stop (SIGTERM) always writes it; a crash (SIGKILL, OOM)
#: loses what arrived since the last write, so this is the window of loss on a crash. Each save
#: rewrites the whole file; with the server keeping up, it holds little beyond retained messages.
AUTOSAVE_INTERVAL_S = 60

#: For the README: what a broker the fleet server does not start must be set to, per product.
EXTERNAL_BROKER_SETTINGS = """\
The fleet server's subscriber must never lose a QoS 1 message; every broker below drops them by
default once one client's queue is full (1,000 messages is the usual default). Configure:

- Mosquitto 2:  max_queued_messages 0   (default 1000; 0 = no limit)
                max_queued_bytes 0      (the default; any other value drops messages too)
                max_inflight_messages 100
                persistence true  +  persistence_location /var/lib/mosquitto/
                autosave_interval 60    (a crash loses at most this many seconds of queue)
- EMQX 5:       mqtt.max_mqueue_len raised far above an outage's worth of messages
                (default 1000, drops the oldest), mqtt.max_inflight as above,
                and durable sessions if queued messages must survive a node restart.
- HiveMQ:       <mqtt><queued-messages><max-queue-size> raised likewise (default 1000,
                strategy discard).
- VerneMQ:      max_online_messages = -1 and max_offline_messages = -1 (or bounds above an
                outage's worth; default 1000 each).

Bound what one client can send (one oversized message must never reach the server):
- Mosquitto 2:  message_size_limit 262144   max_packet_size 524288
- EMQX 5:       mqtt.max_packet_size = 256KB
- HiveMQ:       <mqtt><packets><max-packet-size>262144</max-packet-size>
- VerneMQ:      max_message_size = 262144

Tie client ids to identities, so nobody can disconnect a terminal or the server by borrowing
its client id:
- Mosquitto 2:  the terminals' listener with  use_username_as_clientid true  (a client's id
                becomes its username, the terminal id), and the server's clients on a listener
                of their own (loopback or private network; per_listener_settings true, its own
                password_file holding only the server's user), as the embedded broker does.
- EMQX 5:       a client-info authorization rule or `peer_cert_as_clientid`; HiveMQ: an
                extension that checks clientId == username; VerneMQ: vmq_diversity / the
                allow_register hook.

In every case the ACL must let a terminal (username = terminal id) write only
fleet/v1/t/<id>/{presence,status,event,reported,cmd/result} and read only
fleet/v1/t/<id>/{desired,cmd}, and let the server's user read and write fleet/# and $share/#.
"""


def render_acl() -> str:
    """The terminals' ACL of DESIGN.md: a terminal only its own topics.

    How Mosquitto 2.0.11 enforces it (tests/server/test_broker.py): a denied QoS 1 publish gets
    PUBACK reason 135 (v5; 0 on v3.1.1) and then the broker closes the connection; a subscription
    to a forbidden topic is granted and each message is filtered out by the read ACL.
    """
    lines = [
        "# Generated by the fleet server; edits are overwritten at its next start.",
        *(f"pattern write fleet/v1/t/%u/{t}" for t in TERMINAL_WRITE_TOPICS),
        *(f"pattern read fleet/v1/t/%u/{t}" for t in TERMINAL_READ_TOPICS),
    ]
    return "\n".join(lines) + "\n"


def render_server_acl(server_user: str) -> str:
    """The server's listener: its user reads and writes every fleet topic and shared group."""
    lines = [
        "# Generated by the fleet server; edits are overwritten at its next start.",
        f"user {server_user}",
        "topic readwrite fleet/#",
        "topic readwrite $share/#",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Listener:
    """One listener with its own users and ACL."""

    port: int
    bind_address: str
    password_file: Path
    acl_file: Path


def render_config(
    *,
    terminals: Listener,
    server: Listener,
    persistence_dir: Path,
    limits: QueueLimits,
) -> str:
    """mosquitto.conf for the embedded broker.

    Two listeners, each with its own password file and ACL (per_listener_settings true):
    - the terminals' (the `bind_address` kiosks reach): `use_username_as_clientid`, so whatever
      client id a client sends, its session is named by its username -- its terminal id. Holding
      one terminal's password, nobody can take over another terminal's session or the server's.
    - the server's (loopback): only the server's user exists there, so terminal credentials
      cannot log in on it, and the server's clients choose their ids (one per replica and role).
    Client ids are one namespace across listeners; no terminal id can be a server client id
    because server ids contain a dot, which terminal ids (DESIGN.md) never do.
    """
    lines = [
        "# Generated by the fleet server; edits are overwritten at its next start.",
        "per_listener_settings true",
        f"listener {terminals.port} {terminals.bind_address}",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"password_file {terminals.password_file}",
        f"acl_file {terminals.acl_file}",
        f"listener {server.port} {server.bind_address}",
        "allow_anonymous false",
        f"password_file {server.password_file}",
        f"acl_file {server.acl_file}",
        # Queued QoS 1 messages for the server's persistent session survive a broker restart.
        "persistence true",
        f"persistence_location {persistence_dir}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {limits.max_queued_messages}",
        f"max_queued_bytes {limits.max_queued_bytes}",
        f"max_inflight_messages {limits.max_inflight_messages}",
        f"message_size_limit {MESSAGE_SIZE_LIMIT}",
        f"max_packet_size {MAX_PACKET_SIZE}",
        # Our supervisor reads stderr and logs it with Python's timestamps.
        "log_dest stderr",
        "log_timestamp false",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        # On: the supervisor counts session takeovers and refused logins from these lines
        # (broker.BrokerLog) and forwards none of the routine ones to the log.
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"
