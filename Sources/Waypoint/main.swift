// Start-up only: everything else lives in other files, so no closure here is inferred @MainActor (FACTS §3).
WaypointCommand.main()
