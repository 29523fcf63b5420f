/// Splitting CSV bytes into records of fields (RFC 4180 quoting, CRLF or LF, a byte-order mark
/// skipped), counting lines for error messages. Dataset loading and the device's examples
/// store both read CSV through it.
public import CohortCore

/// One field of a record: a byte range (without its quotes) and whether it was quoted.
public struct CSVField: Sendable {
  public var start: Int
  public var end: Int
  public var quoted: Bool

  public init(start: Int, end: Int, quoted: Bool) {
    self.start = start
    self.end = end
    self.quoted = quoted
  }
}

/// Splits bytes into records of fields, counting lines for error messages.
public struct CSVScanner {
  public let bytes: UnsafeBufferPointer<UInt8>
  public let path: String
  public var position = 0
  /// The line the next record starts on (1-based).
  public var line = 1
  /// The line the last record returned started on.
  public var recordLine = 1

  private static let comma = UInt8(ascii: ",")
  private static let quote = UInt8(ascii: "\"")
  private static let cr = UInt8(ascii: "\r")
  private static let lf = UInt8(ascii: "\n")

  public init(bytes: UnsafeBufferPointer<UInt8>, path: String) {
    self.bytes = bytes
    self.path = path
    // Skip a UTF-8 byte-order mark, which spreadsheet programs like to write.
    if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { position = 3 }
  }

  /// Reads the next record into `fields`; false at the end of the input.
  public mutating func next(into fields: inout [CSVField]) throws(CohortError) -> Bool {
    fields.removeAll(keepingCapacity: true)
    let n = bytes.count
    guard position < n else { return false }
    recordLine = line
    while true {
      if bytes[position] == Self.quote {
        let start = position + 1
        let openedOn = line
        var i = start
        var closed = false
        while i < n {
          let b = bytes[i]
          if b == Self.quote {
            if i + 1 < n && bytes[i + 1] == Self.quote {
              i += 2
              continue
            }
            closed = true
            break
          }
          if b == Self.lf { line += 1 }
          i += 1
        }
        guard closed else {
          throw CohortError(
            .invalidData,
            "\(path):\(openedOn): field \(fields.count + 1) opens a quote that is never closed; "
              + "expected a closing '\"'")
        }
        fields.append(CSVField(start: start, end: i, quoted: true))
        position = i + 1
        while position < n && NumberParsing.isSpace(bytes[position]) { position += 1 }
      } else {
        let start = position
        while position < n && bytes[position] != Self.comma && bytes[position] != Self.lf {
          position += 1
        }
        var end = position
        if end > start && bytes[end - 1] == Self.cr { end -= 1 }
        fields.append(CSVField(start: start, end: end, quoted: false))
      }
      guard position < n else { return true }
      let b = bytes[position]
      if b == Self.comma {
        position += 1
        if position == n {
          // A trailing comma at the very end: one last, empty field.
          fields.append(CSVField(start: n, end: n, quoted: false))
          return true
        }
        continue
      }
      if b == Self.lf {
        position += 1
        line += 1
        return true
      }
      if b == Self.cr && (position + 1 == n || bytes[position + 1] == Self.lf) {
        position += position + 1 == n ? 1 : 2
        line += 1
        return true
      }
      throw CohortError(
        .invalidData,
        "\(path):\(line): unexpected \(DataLimits.excerpt(bytes, position, position + 1)) after the "
          + "closing quote of field \(fields.count); expected ',' or the end of the line")
    }
  }

  /// Reads the next data record into `fields`, skipping blank lines, and refuses one whose field
  /// count differs from the header's (`columns` names, read on line `headerLine`); false at the end.
  public mutating func nextRow(into fields: inout [CSVField], columns: Int, headerLine: Int)
    throws(CohortError)
    -> Bool
  {
    while try next(into: &fields) {
      if isBlank(fields) { continue }
      guard fields.count == columns else {
        throw CohortError(
          .invalidData,
          "\(path):\(recordLine): expected \(columns) fields as in the header on line \(headerLine), "
            + "found \(fields.count)")
      }
      return true
    }
    return false
  }

  /// A record with nothing but spaces: a blank line, skipped.
  public func isBlank(_ fields: [CSVField]) -> Bool {
    guard fields.count == 1, !fields[0].quoted else { return false }
    for i in fields[0].start..<fields[0].end where !NumberParsing.isSpace(bytes[i]) { return false }
    return true
  }

  /// The text of a field: quotes undoubled; unquoted text trimmed of spaces.
  public func text(_ field: CSVField) -> String {
    var s = field.start
    var e = field.end
    if !field.quoted {
      while s < e && NumberParsing.isSpace(bytes[s]) { s += 1 }
      while e > s && NumberParsing.isSpace(bytes[e - 1]) { e -= 1 }
    }
    let raw = String(decoding: UnsafeBufferPointer(rebasing: bytes[s..<e]), as: UTF8.self)
    return field.quoted ? raw.replacingOccurrences(of: "\"\"", with: "\"") : raw
  }

  /// A short, quoted excerpt of a field for an error message.
  public func excerpt(_ field: CSVField) -> String {
    let limit = 40
    let stop = min(field.end, field.start + limit)
    let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[field.start..<stop]), as: UTF8.self)
    return stop < field.end ? "'\(text)…'" : "'\(text)'"
  }

  /// Reads the header: the first record that is not blank. Returns the column names and the
  /// line they stand on; a file without one is an error that names the column it needs.
  public mutating func header(naming required: String) throws(CohortError) -> (names: [String], line: Int) {
    var fields: [CSVField] = []
    repeat {
      guard try next(into: &fields) else {
        throw CohortError(
          .invalidData,
          "\(path): the file has no header row; expected a first line naming the columns, one of them "
            + "'\(required)'")
      }
    } while isBlank(fields)
    return (fields.map { text($0) }, recordLine)
  }
}
