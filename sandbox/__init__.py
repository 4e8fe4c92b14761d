"""Sandbox: real web servers (nginx + PHP-FPM, Tomcat, HAProxy, nginx LB) for test
clusters and the demo, plus a sample git repository generator.

    from sandbox import PhpNode, HAProxy, make_sample_repo
"""

from sandbox.repo import activate_release, add_release, export_release, make_sample_repo
from sandbox.web import HAProxy, NginxLB, PhpNode, ServiceError, TomcatNode, http_get, wait_for_text

__all__ = [
    "PhpNode",
    "TomcatNode",
    "HAProxy",
    "NginxLB",
    "ServiceError",
    "http_get",
    "wait_for_text",
    "make_sample_repo",
    "add_release",
    "export_release",
    "activate_release",
]
