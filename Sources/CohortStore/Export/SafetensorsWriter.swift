public import CohortCore
public import Foundation

/// Writes weights as a safetensors file (https://github.com/huggingface/safetensors, format
/// as published): an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON
/// header padded with spaces to a multiple of 8, then the tensors' bytes.
///
/// The header names every tensor of the layout, in layout order, as
/// `{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}`, offsets in bytes from the
/// start of the data section; `__metadata__` (string to string) comes first when given. The data
/// section is the flat parameter vector as little-endian Float32, so its SHA-256 is
/// `Weights.sha256`.
public enum SafetensorsWriter {
  public static func encode(_ weights: Weights, metadata: [String: String] = [:]) throws(CohortError) -> Data
  {
    let layout = weights.layout
    var seen = Set<String>()
    for t in layout.tensors {
      guard t.name != "__metadata__", seen.insert(t.name).inserted else {
        throw CohortError(
          .shapeMismatch,
          "the layout names the tensor \"\(t.name)\" "
            + (t.name == "__metadata__" ? "(a name safetensors reserves)" : "more than once")
            + ", which safetensors cannot hold",
          fix: "give every tensor of the model a distinct name")
      }
    }

    var entries: [String] = []
    if !metadata.isEmpty {
      let pairs = metadata.sorted { $0.key < $1.key }.map {
        JSONText.string($0.key) + ":" + JSONText.string($0.value)
      }
      entries.append("\"__metadata__\":{" + pairs.joined(separator: ",") + "}")
    }
    for (t, offset) in zip(layout.tensors, layout.offsets) {
      let begin = offset * 4
      let end = begin + t.count * 4
      entries.append(
        JSONText.string(t.name) + ":{\"dtype\":\"F32\",\"shape\":["
          + t.shape.map { String($0) }.joined(separator: ",") + "],\"data_offsets\":[\(begin),\(end)]}")
    }
    var header = Array(("{" + entries.joined(separator: ",") + "}").utf8)
    let padding = (8 - header.count % 8) % 8
    header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))

    var out = Data()
    out.reserveCapacity(8 + header.count + weights.count * 4)
    withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: header)
    out.append(Float32LittleEndian.data(weights.values))
    return out
  }
}

/// Minimal JSON text writing for headers whose key order matters.
enum JSONText {
  /// `text` as a JSON string literal.
  static func string(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case _ where scalar.value < 0x20:
        let hex = String(scalar.value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }
}
