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

/// A `Clock` that moves only when a test says so: `sleep` suspends until `advance` passes its
/// deadline, and `waitForSleepers` lets a test wait (without sleeping) until code under test
/// has gone to sleep on it.
public final class TestClock: Clock, @unchecked Sendable {
  public struct Instant: InstantProtocol, Sendable {
    public var offset: Duration
    public func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
    public func duration(to other: Instant) -> Duration { other.offset - offset }
    public static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
  }

  private let lock = NSLock()
  private var current = Instant(offset: .zero)
  private var sleepers: [UUID: (deadline: Instant, continuation: CheckedContinuation<Void, any Error>)] = [:]
  private var watchers: [(count: Int, from: Duration, continuation: CheckedContinuation<Void, Never>)] = []

  public init() {}

  public var now: Instant { lock.withLock { current } }
  public var minimumResolution: Duration { .zero }

  public func sleep(until deadline: Instant, tolerance: Duration?) async throws {
    let id = UUID()
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        let (ready, woken) = lock.withLock { () -> (Bool, [CheckedContinuation<Void, Never>]) in
          if deadline <= current || Task.isCancelled { return (true, []) }
          sleepers[id] = (deadline, continuation)
          return (false, takeWatchers())
        }
        if ready { continuation.resume() }
        for w in woken { w.resume() }
      }
    } onCancel: {
      let sleeper = lock.withLock { sleepers.removeValue(forKey: id) }
      sleeper?.continuation.resume(throwing: CancellationError())
    }
  }

  /// Moves time forward and wakes every sleeper whose deadline has come.
  public func advance(by duration: Duration) {
    let due = lock.withLock { () -> [CheckedContinuation<Void, any Error>] in
      current = current.advanced(by: duration)
      let ready = sleepers.filter { $0.value.deadline <= current }
      for id in ready.keys { sleepers.removeValue(forKey: id) }
      return ready.values.map(\.continuation)
    }
    for c in due { c.resume() }
  }

  /// Returns once at least `count` tasks are asleep on this clock until `from` (since the
  /// clock's start) or later: a test waits for code under test to have gone to sleep anew.
  public func waitForSleepers(_ count: Int = 1, until from: Duration = .zero) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let ready = lock.withLock { () -> Bool in
        if sleeping(until: from) >= count { return true }
        watchers.append((count, from, continuation))
        return false
      }
      if ready { continuation.resume() }
    }
  }

  private func sleeping(until from: Duration) -> Int {
    sleepers.values.filter { $0.deadline.offset >= from }.count
  }

  /// Watchers satisfied by the current sleepers (called with the lock held).
  private func takeWatchers() -> [CheckedContinuation<Void, Never>] {
    let ready = watchers.filter { $0.count <= sleeping(until: $0.from) }
    watchers.removeAll { $0.count <= sleeping(until: $0.from) }
    return ready.map(\.continuation)
  }
}
