// swift-tools-version: 6.1
import PackageDescription

// Swift 6 language mode (strict concurrency) is the default for tools 6.x; every target opts
// into the upcoming features that keep public API explicit.
let swiftSettings: [SwiftSetting] = [
  .enableUpcomingFeature("ExistentialAny"),
  .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
  name: "Cohort",
  products: [
    .executable(name: "cohort", targets: ["cohort"]),
    .library(name: "CohortCore", targets: ["CohortCore"]),
    .library(name: "CohortML", targets: ["CohortML"]),
    .library(name: "CohortStore", targets: ["CohortStore"]),
    .library(name: "CohortPrivacy", targets: ["CohortPrivacy"]),
    .library(name: "CohortCompression", targets: ["CohortCompression"]),
    .library(name: "CohortSecAgg", targets: ["CohortSecAgg"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    // The network: gRPC over HTTP/2 with TLS, certificates for development CAs, graceful
    // shutdown, and Prometheus text for metrics.
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
    // Object identifiers of the certificate extension that carries a device's signing key.
    .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    // PostgreSQL for replicas of `cohort serve` sharing one run (the store's second backend).
    .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
  ],
  targets: [
    // System libraries. scripts/setup installs the Debian packages named in `providers`.
    .systemLibrary(
      name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium",
      providers: [.apt(["libsodium-dev"])]),
    .systemLibrary(
      name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
      providers: [.apt(["libopenblas-dev"])]),
    .systemLibrary(
      name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
      providers: [.apt(["zlib1g-dev"])]),
    // The C library's standard output, which Swift 6 cannot name.
    .systemLibrary(name: "CStdio", path: "Sources/CStdio"),

    .target(
      name: "CohortCore",
      dependencies: ["CSodium", .product(name: "Yams", package: "Yams")],
      swiftSettings: swiftSettings),
    .target(
      name: "CohortML",
      dependencies: ["CohortCore", "CBLAS", "CZlib"],
      swiftSettings: swiftSettings),
    // SQLite through GRDB (the system libsqlite3; scripts/setup installs libsqlite3-dev), and
    // PostgreSQL through postgres-nio for replicas: DESIGN.md gives the store module "all SQLite
    // (and, for replicas, PostgreSQL) through one store interface", so both backends live here.
    .target(
      name: "CohortStore",
      dependencies: [
        "CohortCore", .product(name: "GRDB", package: "GRDB.swift"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: swiftSettings),
    .target(
      name: "CohortAggregation",
      dependencies: ["CohortCore"],
      swiftSettings: swiftSettings),
    // Update codecs (clipping, random rotation, quantization, bit packing, sparsification): pure
    // functions of their input and a seed, shared by devices and the server.
    .target(
      name: "CohortCompression",
      dependencies: ["CohortCore"],
      swiftSettings: swiftSettings),
    // Secure aggregation (Bonawitz et al. 2017, Bell et al. 2020): message-driven device and server
    // state machines; libsodium for key agreement, mask expansion, share encryption and signatures.
    .target(
      name: "CohortSecAgg",
      dependencies: ["CohortCore", "CSodium"],
      swiftSettings: swiftSettings),
    // The round and session state machines, the messages between device and server, and how
    // updates are encoded into the secure-aggregation ring (shared by devices and server).
    .target(
      name: "CohortProtocol",
      dependencies: [
        "CohortCore", "CohortAggregation", "CohortCompression", "CohortPrivacy", "CohortSecAgg",
      ],
      swiftSettings: swiftSettings),
    // The device's side: the Linux client runtime (a pump around the protocol's device machines,
    // over any `ParticipationChannel`), local training and encoding of an update (shared with the
    // simulator's virtual devices), eligibility, and CSV imports into the example store (which
    // is CohortStore's).
    .target(
      name: "CohortDevice",
      dependencies: [
        "CohortCore", "CohortML", "CohortProtocol", "CohortCompression", "CohortPrivacy", "CohortSecAgg",
        "CohortStore",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: swiftSettings),
    // gRPC service and client over TLS/mTLS (generated code in Generated/, from Protos/ by
    // scripts/generate-protos), and the device certificates' verification it needs at run time.
    // It implements the device's `ParticipationChannel` and `SecureAggregationIdentity` and
    // knows nothing of the device runtime (CohortDevice) or training (CohortML).
    .target(
      name: "CohortTransport",
      dependencies: [
        "CohortCore", "CohortProtocol", "CohortSecAgg", "CohortCompression",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
      ],
      swiftSettings: swiftSettings),
    // Operations: development certificates (`cohort certs create`), the load generator
    // (`cohort load`) and the Prometheus endpoint (`cohort serve --metrics`).
    .target(
      name: "CohortOperations",
      dependencies: [
        "CohortCore", "CohortProtocol", "CohortSecAgg", "CohortTransport", "CohortDevice",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
      ],
      swiftSettings: swiftSettings),
    // `cohort serve`'s composition: a served run (CohortServer) behind the gRPC endpoint
    // (CohortTransport), so neither of the two knows the other.
    .target(
      name: "CohortServing",
      dependencies: [
        "CohortCore", "CohortML", "CohortProtocol", "CohortServer", "CohortStore", "CohortTransport",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
      ],
      swiftSettings: swiftSettings),
    .target(
      name: "CohortServer",
      dependencies: [
        "CohortCore", "CohortProtocol", "CohortAggregation", "CohortStore", "CohortPrivacy",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: swiftSettings),
    .target(
      name: "CohortSimulator",
      dependencies: [
        "CohortCore", "CohortML", "CohortProtocol", "CohortAggregation", "CohortServer", "CohortStore",
        "CohortSecAgg", "CohortCompression", "CohortPrivacy", "CohortDevice",
        .product(name: "Logging", package: "swift-log"),
      ],
      // Async functions run on their caller's executor (SE-0461): the event loop stays on the
      // coordinator's executor instead of hopping for every event.
      swiftSettings: swiftSettings + [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]),
    // Comparison reports: self-contained HTML with hand-written SVG charts, rendered without I/O.
    .target(
      name: "CohortReport",
      dependencies: ["CohortCore", "CohortStore"],
      swiftSettings: swiftSettings),
    // Differential privacy: the RDP accountant of the subsampled Gaussian mechanism. Pure, no I/O.
    .target(
      name: "CohortPrivacy",
      dependencies: ["CohortCore"],
      swiftSettings: swiftSettings),
    .target(
      name: "CohortTesting",
      dependencies: ["CohortCore", "CohortML", "CohortProtocol"],
      swiftSettings: swiftSettings),
    .executableTarget(
      name: "cohort",
      dependencies: [
        "CohortCore", "CohortML", "CohortStore", "CohortServer", "CohortSimulator", "CohortReport",
        "CohortPrivacy", "CohortSecAgg", "CBLAS", "CohortDevice", "CohortTransport", "CohortProtocol",
        "CohortServing", "CohortOperations", "CStdio",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: swiftSettings),

    .testTarget(
      name: "CohortCoreTests",
      dependencies: ["CohortCore", "CohortTesting"],
      swiftSettings: swiftSettings),
    // Runs the built `cohort` binary end to end, as a user would.
    .testTarget(
      name: "CohortCLITests",
      dependencies: [
        "cohort", "CohortTesting", "CohortStore", "CohortReport", "CohortCore", "CohortDevice",
        "CohortSimulator",
        "CohortTransport", "CohortProtocol",
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortAggregationTests",
      dependencies: ["CohortAggregation", "CohortCore"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortCompressionTests",
      dependencies: ["CohortCompression", "CohortCore"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortSecAggTests",
      dependencies: ["CohortSecAgg", "CohortCore"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortProtocolTests",
      dependencies: ["CohortProtocol", "CohortCore", "CohortSecAgg", "CohortCompression"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortServerTests",
      dependencies: [
        "CohortServer", "CohortProtocol", "CohortStore", "CohortCore", "CohortTesting", "CohortPrivacy",
        "CohortAggregation",
        .product(name: "MetricsTestKit", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortSimulatorTests",
      dependencies: ["CohortSimulator", "CohortML", "CohortCore", "CohortTesting", "CohortPrivacy"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortMLTests",
      dependencies: ["CohortML", "CohortCore", "CohortTesting", "CZlib"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortReportTests",
      dependencies: ["CohortReport", "CohortStore", "CohortCore", "CohortTesting"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortPrivacyTests",
      dependencies: ["CohortPrivacy", "CohortCore", "CohortCompression"],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortDeviceTests",
      dependencies: [
        "CohortDevice", "CohortStore", "CohortCore", "CohortML", "CohortProtocol", "CohortTesting",
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortTransportTests",
      dependencies: [
        "CohortTransport", "CohortOperations", "CohortServing", "CohortDevice", "CohortServer",
        "CohortSimulator",
        "CohortProtocol",
        "CohortStore",
        "CohortCore", "CohortML", "CohortTesting",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortOperationsTests",
      dependencies: [
        "CohortOperations", "CohortTransport", "CohortCore",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "X509", package: "swift-certificates"),
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "CohortStoreTests",
      dependencies: [
        "CohortStore", "CohortCore", "CohortTesting", .product(name: "GRDB", package: "GRDB.swift"),
        .product(name: "PostgresNIO", package: "postgres-nio"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: swiftSettings),
  ]
)
