/// An error a user can act on: a stable code, what went wrong, and what to do about it.
public struct CohortError: Error, Sendable, Hashable, CustomStringConvertible {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private let name: String
    private init(_ name: String) { self.name = name }
    public var description: String { name }

    /// A plan, scenario or command-line value is wrong; the message names it.
    public static let invalidConfiguration = Code("invalid-configuration")
    /// An input data file is malformed; the message names the file and where.
    public static let invalidData = Code("invalid-data")
    /// A file could not be read or written.
    public static let io = Code("io")
    /// Shapes or sizes that must agree do not (a model against its data, two weight vectors).
    public static let shapeMismatch = Code("shape-mismatch")
    /// Something asked for by name or id (a run, a round, a checkpoint) does not exist.
    public static let notFound = Code("not-found")
    /// The results store (SQLite) failed, or holds data that fails its checks.
    public static let storage = Code("storage")
    /// A write by a server that no longer leads the run: another replica took the run's lease
    /// (a larger fencing token), so the write was refused and nothing was stored.
    public static let fenced = Code("fenced")
  }

  public var code: Code
  public var message: String
  /// What the user should do; empty when the message already says it.
  public var fix: String

  public init(_ code: Code, _ message: String, fix: String = "") {
    self.code = code
    self.message = message
    self.fix = fix
  }

  public var description: String {
    fix.isEmpty ? "error[\(code)]: \(message)" : "error[\(code)]: \(message)\n  fix: \(fix)"
  }
}
