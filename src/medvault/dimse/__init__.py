"""DIMSE (DICOM networking) for medvault: a pynetdicom SCP over mutual TLS in front of the archive.

Public API (what ``medvault serve`` / ``medvault nodes`` use)::

    from medvault.dimse import start_dimse_server, dimse_tls_for_home, node_store, ca_material

    nodes = node_store(home)                                  # NodeStore over the home's index
    issued = nodes.add("ct1", ae_title="CT1", host="10.0.0.5", port=104,
                       permissions={"store", "find"}, ca=ca_material(home))
    cert_path, key_path = write_node_credentials(issued, Path("ct1-credentials"))

    server = start_dimse_server(archive=home.archive, nodes=nodes, tls=dimse_tls_for_home(home),
                                audit=ledger_sink, host="0.0.0.0", port=2762, ae_title="MEDVAULT")
    ...
    server.shutdown()
"""

from medvault.dimse._tls import DimseTls
from medvault.dimse.audit import AuditSink, DimseAuditEvent
from medvault.dimse.home import ca_material, dimse_tls_for_home, node_store, write_node_credentials
from medvault.dimse.permissions import DimseOperation, NodeDecision, decide_node
from medvault.dimse.server import (
    DEFAULT_AE_TITLE,
    DEFAULT_PORT,
    STORAGE_TRANSFER_SYNTAXES,
    DimseServer,
    start_dimse_server,
)
from medvault.index.nodes import NODE_PERMISSIONS, CaMaterial, IssuedNode, Node, NodeStore

__all__ = [
    "DEFAULT_AE_TITLE",
    "DEFAULT_PORT",
    "NODE_PERMISSIONS",
    "STORAGE_TRANSFER_SYNTAXES",
    "AuditSink",
    "CaMaterial",
    "DimseAuditEvent",
    "DimseOperation",
    "DimseServer",
    "DimseTls",
    "IssuedNode",
    "Node",
    "NodeDecision",
    "NodeStore",
    "ca_material",
    "decide_node",
    "dimse_tls_for_home",
    "node_store",
    "start_dimse_server",
    "write_node_credentials",
]
