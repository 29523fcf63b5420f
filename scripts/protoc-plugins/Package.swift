// swift-tools-version: 6.1
// Builds only the two protoc plugins that scripts/generate-protos runs. Kept apart from the main
// package so that a normal build never compiles them.
import PackageDescription

let package = Package(
  name: "CohortProtocPlugins",
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", exact: "2.4.1"),
  ],
  targets: []
)
