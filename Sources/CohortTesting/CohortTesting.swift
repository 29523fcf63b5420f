public import CohortProtocol
public import Foundation

/// A directory of its own for one test, removed when the value goes away.
public final class TemporaryDirectory: Sendable {
  public let url: URL

  public init() {
    url = FileManager.default.temporaryDirectory.appendingPathComponent("cohort-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
  }

  deinit { try? FileManager.default.removeItem(at: url) }

  /// The directory's own path.
  public var path: String { url.path }

  /// The path of `name` inside the directory.
  public func file(_ name: String) -> String { url.appendingPathComponent(name).path }

  /// Writes raw bytes to `name` (creating subdirectories) and returns its path.
  @discardableResult
  public func write(_ name: String, _ bytes: [UInt8]) -> String {
    let p = file(name)
    try? FileManager.default.createDirectory(
      atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
    return p
  }

  /// Writes `text` to `name` and returns its path.
  @discardableResult
  public func write(_ name: String, _ text: String) -> String { write(name, Array(text.utf8)) }
}

/// The package's root directory (where Package.swift is), for tests that read shipped files.
public let repositoryRoot: URL = {
  var url = URL(fileURLWithPath: #filePath)
  while url.path != "/" {
    url.deleteLastPathComponent()
    if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
  }
  return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
}()

/// A device link that keeps every assignment it is given, for tests that play the devices.
public final class RecordingLink: DeviceLink, @unchecked Sendable {
  private let lock = NSLock()
  private var received: [(TaskAssignment, [DeviceID])] = []

  public init() {}

  public func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async {
    lock.withLock { received.append((assignment, devices)) }
  }

  /// Everything assigned since the last call.
  public func drain() -> [(assignment: TaskAssignment, devices: [DeviceID])] {
    lock.withLock {
      defer { received = [] }
      return received.map { ($0.0, $0.1) }
    }
  }
}
