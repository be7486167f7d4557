import HBONEServer
import WaypointConfig

extension Runtime {
    /// The Prometheus page: the workers' counters summed, the trace and certificate gauges, Istio's metrics.
    func metrics() -> String {
        func sum(_ counter: (WorkerCounters) -> Int) -> Int { workers.reduce(0) { $0 + counter($1.counters) } }
        var text = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { text += "\(name)\(labels) \(value)\n" }
        }
        metric(
            "waypoint_downstream_connections_total", "counter", "Downstream connections accepted.",
            [("", sum { $0.downstreamConnectionsTotal.value })])
        metric(
            "waypoint_downstream_connections_active", "gauge", "Downstream connections open now.",
            [("", sum { $0.downstreamConnectionsActive.value })])
        metric(
            "waypoint_downstream_requests_total", "counter", "Responses sent downstream, by status class.",
            [
                ("{status_class=\"1xx\"}", sum { $0.responses1xx.value }),
                ("{status_class=\"2xx\"}", sum { $0.responses2xx.value }),
                ("{status_class=\"3xx\"}", sum { $0.responses3xx.value }),
                ("{status_class=\"4xx\"}", sum { $0.responses4xx.value }),
                ("{status_class=\"5xx\"}", sum { $0.responses5xx.value }),
            ])
        metric(
            "waypoint_upstream_connections_total", "counter", "Upstream connections opened.",
            [("", sum { $0.upstreamConnectionsTotal.value })])
        metric(
            "waypoint_upstream_connect_failures_total", "counter", "Upstream connects that failed or timed out.",
            [("", sum { $0.upstreamConnectFailures.value })])
        metric(
            "waypoint_upstream_resets_total", "counter", "Responses cut off by an upstream failure after their head was sent.",
            [("", sum { $0.upstreamResetsMidResponse.value })])
        metric(
            "waypoint_relay_idle_timeouts_total", "counter",
            "TCP tunnels and upgraded (WebSocket) connections closed for moving no byte within --relay-idle-timeout.",
            [("", sum { $0.relayIdleTimeouts.value })])
        metric(
            "waypoint_hbone_connections_total", "counter", "HBONE connections accepted.",
            [("", sum { $0.hboneConnectionsTotal.value })])
        metric(
            "waypoint_hbone_connections_active", "gauge", "HBONE connections open now.",
            [("", sum { $0.hboneConnectionsActive.value })])
        metric(
            "waypoint_tls_handshakes_total", "counter", "HBONE TLS handshakes, by result and failure reason.",
            [("{result=\"ok\"}", sum { $0.handshakesOK.value })]
                + WorkerCounters.handshakeFailureReasons.enumerated().map { index, reason in
                    ("{result=\"failed\",reason=\"\(reason)\"}", sum { $0.handshakeFailures.value(index) })
                })
        metric("waypoint_tunnels_active", "gauge", "HBONE tunnels open now.", [("", sum { $0.tunnelsActive.value })])
        metric(
            "waypoint_worker_tunnels_active", "gauge", "HBONE tunnels open now, per worker (balance).",
            workers.map { ("{worker=\"\($0.id)\"}", $0.counters.tunnelsActive.value) })
        metric("waypoint_tunnels_total", "counter", "HBONE tunnels opened.", [("", sum { $0.tunnelsTotal.value })])
        metric(
            "waypoint_tunnels_refused_total", "counter", "CONNECT streams refused, by reason.",
            WorkerCounters.tunnelRefusalReasons.enumerated().map { index, reason in
                ("{reason=\"\(reason)\"}", sum { $0.tunnelRefusals.value(index) })
            })
        metric(
            "waypoint_tunnel_bytes_total", "counter", "Payload bytes through HBONE tunnels, by direction.",
            [
                ("{direction=\"received\"}", sum { $0.tunnelBytesReceived.value }),
                ("{direction=\"sent\"}", sum { $0.tunnelBytesSent.value }),
            ])
        metric(
            "waypoint_proxy_protocol_rejected_total", "counter",
            "PROXY-protocol connections closed for a missing or bad header, identity or destination.",
            [("", sum { $0.proxyHeaderErrors.value })])
        metric(
            "waypoint_hbone_keepalive_timeouts_total", "counter", "HBONE connections closed for an unanswered PING.",
            [("", sum { $0.keepaliveTimeouts.value })])
        metric(
            "waypoint_hbone_preface_timeouts_total", "counter", "HBONE connections closed for no HTTP/2 preface after the TLS handshake.",
            [("", sum { $0.prefaceTimeouts.value })])
        metric(
            "waypoint_http2_protocol_errors_total", "counter", "HBONE connections closed for a protocol error or flood.",
            [("", sum { $0.http2ProtocolErrors.value })])
        metric(
            "waypoint_upstream_retries_total", "counter", "Retries started, by what the failed try ended with.",
            WorkerCounters.retryReasons.enumerated().map { index, reason in
                ("{reason=\"\(reason)\"}", sum { $0.retries.value(index) })
            })
        metric(
            "waypoint_upstream_retries_succeeded_total", "counter", "Exchanges answered 2xx-4xx after at least one retry.",
            [("", sum { $0.retriesSucceeded.value })])
        metric(
            "waypoint_upstream_retry_budget_exhausted_total", "counter", "Retries not made because the retry budget was spent.",
            [("", sum { $0.retryBudgetExhausted.value })])
        metric(
            "waypoint_upstream_retry_overflow_total", "counter",
            "Retries not made because the backend's DestinationRule maxRetries were in flight.",
            [("", sum { $0.retryOverflow.value })])
        metric(
            "waypoint_upstream_overflow_total", "counter",
            "Requests refused because the backend's connection limit and pending queue were full.",
            [("", sum { $0.upstreamOverflow.value })])
        metric(
            "waypoint_outlier_ejections_total", "counter", "Endpoints ejected by outlier detection (DestinationRule).",
            [("", sum { $0.outlierEjections.value })])
        metric(
            "waypoint_mirror_requests_total", "counter", "Request copies for RequestMirror / VirtualService mirror, by result.",
            [
                ("{result=\"sent\"}", sum { $0.mirrorRequests.value }),
                ("{result=\"skipped\"}", sum { $0.mirrorsSkipped.value }),
            ])
        metric(
            "waypoint_fault_aborts_total", "counter", "Requests answered by a VirtualService fault abort.",
            [("", sum { $0.faultAborts.value })])
        metric(
            "waypoint_fault_delays_total", "counter", "Requests held back by a VirtualService fault delay.",
            [("", sum { $0.faultDelays.value })])
        metric(
            "waypoint_authorization_decisions_total", "counter", "Authorization decisions, by result.",
            [
                ("{result=\"allow\"}", sum { $0.authorizationAllowed.value }),
                ("{result=\"deny\"}", sum { $0.authorizationDenied.value }),
            ])
        metric(
            "waypoint_jwt_rejected_total", "counter", "Requests refused with 401 because their JWT was not valid (RequestAuthentication).",
            [("", sum { $0.jwtRejected.value })])
        metric(
            "waypoint_ext_authz_checks_total", "counter",
            "External authorization checks (CUSTOM AuthorizationPolicy), by result (failed: no answer in time, unreachable, 5xx).",
            WorkerCounters.ExternalCheckResult.allCases.map { result in
                ("{result=\"\(result.label)\"}", sum { $0.externalChecks.value(result.rawValue) })
            })
        var byPolicy: [String: Int] = ["(no ALLOW policy matched)|deny": sum { $0.authorizationNoAllowMatched.value }]
        for worker in workers { byPolicy.merge(worker.counters.policyDecisionTotals(), uniquingKeysWith: +) }
        metric(
            "waypoint_authorization_policy_decisions_total", "counter", "Decisions made by a policy (or by no ALLOW policy matching).",
            byPolicy.sorted { $0.key < $1.key }.map { key, value in
                let parts = key.split(separator: "|", maxSplits: 1)
                return ("{policy=\"\(parts[0])\",result=\"\(parts.count > 1 ? parts[1] : "")\"}", value)
            })
        metric(
            "waypoint_config_reloads_total", "counter", "Config reloads, by result.",
            [("{result=\"ok\"}", reloadsOK), ("{result=\"failed\"}", reloadsFailed)])
        metric(
            "waypoint_dns_resolutions_total", "counter",
            "Resolutions of ServiceEntry host names (resolution: DNS), by result (failed: the addresses before are kept).",
            [
                ("{result=\"ok\"}", dnsResolutions.succeeded.load(ordering: .relaxed)),
                ("{result=\"failed\"}", dnsResolutions.failed.load(ordering: .relaxed)),
            ])
        metric(
            "waypoint_config_rejected_total", "counter", "Config changes rejected (the previous config kept serving).",
            [("", reloadsFailed)])
        metric("waypoint_config_generation", "gauge", "Generation of the active config.", [("", Int(snapshot.generation))])
        metric(
            "waypoint_config_compiles_total", "counter",
            "Snapshots compiled: everything, or only the Services that changed EndpointSlices and Pods touch.",
            [("{mode=\"full\"}", config.compiles.full), ("{mode=\"endpoints\"}", config.compiles.endpoints)])
        let (parse, compile) = config.timings
        text += "# HELP waypoint_config_load_seconds How long the last config load took, by phase.\n"
        text += "# TYPE waypoint_config_load_seconds gauge\n"
        text += "waypoint_config_load_seconds{phase=\"parse\"} \(parse.seconds)\n"
        text += "waypoint_config_load_seconds{phase=\"compile\"} \(compile.seconds)\n"
        if let kubernetes {
            metric(
                "waypoint_kubernetes_objects", "gauge", "Objects the Kubernetes API source holds, by kind and namespace.",
                kubernetes.store.counts().map { kind, namespace, count in ("{kind=\"\(kind)\",namespace=\"\(namespace)\"}", count) })
            metric(
                "waypoint_kubernetes_watch_restarts_total", "counter", "Watches started again, by kind, namespace and why.",
                kubernetes.store.restarts().map { kind, reason, count in
                    ("{kind=\"\(kind.kind)\",namespace=\"\(kind.namespace)\",reason=\"\(reason.rawValue)\"}", count)
                })
            text += "# HELP waypoint_kubernetes_last_event_timestamp_seconds When the API server last sent a list page or event.\n"
            text += "# TYPE waypoint_kubernetes_last_event_timestamp_seconds gauge\n"
            text += "waypoint_kubernetes_last_event_timestamp_seconds \(kubernetes.store.lastEvent)\n"
            text += "# HELP waypoint_kubernetes_event_to_swap_seconds From a change reaching the waypoint to the snapshot swap with it.\n"
            text += "# TYPE waypoint_kubernetes_event_to_swap_seconds histogram\n"
            text += kubernetes.eventToSwap.lines("waypoint_kubernetes_event_to_swap_seconds")
        }
        metric("waypoint_workers", "gauge", "Worker threads.", [("", workers.count)])
        if let tracer = options.settings.tracer {
            metric(
                "waypoint_trace_spans_total", "counter", "Spans of traced requests, by what became of them.",
                [
                    ("{result=\"exported\"}", tracer.exported.value), ("{result=\"dropped\"}", tracer.dropped.value),
                ])
        }
        text += meshCertificates?.metricsText ?? ""
        text += IstioMetrics.prometheusText(workers.map(\.counters.istio))
        return text
    }
}
