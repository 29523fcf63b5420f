/// One thing wrong in a plan or scenario file: where it is, what was found, what is accepted.
public struct ConfigurationIssue: Sendable, Hashable, CustomStringConvertible {
  public var file: String
  /// 1-based line of the offending node, when the YAML parser knows it.
  public var line: Int?
  /// Dotted path of the key, e.g. `server.cohort.goal`; empty for the document itself.
  public var keyPath: String
  /// The value as written, when there is one.
  public var value: String?
  /// What is wrong and what is accepted instead.
  public var message: String

  public init(file: String, line: Int?, keyPath: String, value: String?, message: String) {
    self.file = file
    self.line = line
    self.keyPath = keyPath
    self.value = value
    self.message = message
  }

  public var description: String {
    var location = file
    if let line { location += ":\(line)" }
    let key = keyPath.isEmpty ? "" : " \(keyPath)"
    let shown = value.map { " = \(Self.quote($0))" } ?? ""
    return "\(location):\(key)\(shown): \(message)"
  }

  static func quote(_ text: String) -> String {
    let short = text.count > 60 ? String(text.prefix(57)) + "..." : text
    return "'\(short)'"
  }
}

/// Every problem found while loading a configuration file (loading does not stop at the first).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
  public var issues: [ConfigurationIssue]

  public init(issues: [ConfigurationIssue]) { self.issues = issues }

  public var description: String {
    issues.map { "error: \($0)" }.joined(separator: "\n")
  }
}
