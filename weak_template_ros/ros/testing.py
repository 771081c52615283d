"""Helpers to run real nodes in-process for tests, benches and the demo.

:func:`ros_session` starts an rclpy context of its own (loopback environment checked), spins a
multi-threaded executor in a background thread and tears everything down at exit; nodes are
added with :meth:`RosSession.add`. :class:`TopicRecorder` keeps what a topic delivers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

from weak_template_ros.ros.loopback import require_loopback_env, use_loopback_env
from weak_template_ros.ros.node_main import stop_executor


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class RosSession:
    """An rclpy context with a spinning executor (see :func:`ros_session`)."""

    def __init__(self, context, executor):
        self.context = context
        self.executor = executor
        self.nodes: list = []

    def add(self, node):
        """Spin ``node`` (created with ``context=session.context``) in this session; returns it."""
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str, **kwargs):
        """A plain rclpy Node in this session."""
        from rclpy.node import Node

        return self.add(Node(name, context=self.context, **kwargs))

    def remove(self, node) -> None:
        """Stop spinning ``node`` and destroy it."""
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()


@contextlib.contextmanager
def ros_session(num_threads: int = 4) -> Iterator[RosSession]:
    """Context manager: a fresh rclpy context on the loopback profile, spun in a thread."""
    use_loopback_env()
    require_loopback_env()
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    executor = MultiThreadedExecutor(num_threads=num_threads, context=context)
    session = RosSession(context, executor)
    thread = threading.Thread(target=executor.spin, name="ros_session_spin", daemon=True)
    thread.start()
    try:
        yield session
    finally:
        executor.shutdown(timeout_sec=0)
        thread.join(timeout=5.0)
        stop_executor(executor)  # join the callback threads before the nodes go
        for node in reversed(session.nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=context)


class TopicRecorder:
    """Subscribe to a topic and keep every message received (thread-safe).

    Parameters
    ----------
    node : rclpy Node
    msg_type : message class
    topic : str
    qos : QoSProfile or int
    """

    def __init__(self, node, msg_type, topic: str, qos=10):
        self._lock = threading.Lock()
        self._messages: list = []
        self.subscription = node.create_subscription(msg_type, topic, self._on_msg, qos)

    def _on_msg(self, msg) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_for(self, n: int, timeout: float) -> list:
        """Wait until ``n`` messages arrived (or ``timeout`` s); returns all received so far."""
        wait_until(lambda: len(self._messages) >= n, timeout)
        return self.messages
