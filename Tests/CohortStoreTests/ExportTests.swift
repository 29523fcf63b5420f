import CohortCore
import CohortStore
import Foundation
import Testing

/// Reads a little-endian integer of type `T` at `offset`.
private func little<T: FixedWidthInteger>(_ data: Data, at offset: Int, as: T.Type) -> T {
  var value: T = 0
  for i in 0..<MemoryLayout<T>.size {
    value |= T(data[data.startIndex + offset + i]) << (8 * i)
  }
  return value
}

private func floats(_ data: Data) -> [UInt32] {
  stride(from: 0, to: data.count, by: 4).map { little(data, at: $0, as: UInt32.self) }
}

@Suite struct SafetensorsTests {
  @Test func outputParsesBackByTheSpec() throws {
    let weights = makeWeights(0.5)
    let data = try SafetensorsWriter.encode(weights, metadata: ["run": "7", "round": "12", "format": "pt"])

    let n = Int(little(data, at: 0, as: UInt64.self))
    #expect(n % 8 == 0)
    let headerBytes = data.subdata(in: 8..<(8 + n))
    #expect(headerBytes.first == UInt8(ascii: "{"))
    let header = try #require(try JSONSerialization.jsonObject(with: headerBytes) as? [String: Any])
    #expect(header["__metadata__"] as? [String: String] == ["run": "7", "round": "12", "format": "pt"])

    let body = data.subdata(in: (8 + n)..<data.count)
    #expect(body.count == weights.count * 4)
    #expect(SHA256.hex(body) == weights.sha256)
    var expectedBegin = 0
    for (tensor, offset) in zip(weights.layout.tensors, weights.layout.offsets) {
      let entry = try #require(header[tensor.name] as? [String: Any], "\(tensor.name)")
      #expect(entry["dtype"] as? String == "F32")
      #expect(entry["shape"] as? [Int] == tensor.shape)
      let offsets = try #require(entry["data_offsets"] as? [Int])
      // Tensors lie end to end in layout order.
      #expect(offsets == [expectedBegin, expectedBegin + tensor.count * 4])
      expectedBegin = offsets[1]
      let stored = floats(body.subdata(in: offsets[0]..<offsets[1]))
      #expect(stored == Array(weights.values[offset..<(offset + tensor.count)]).map(\.bitPattern))
    }
    #expect(expectedBegin == body.count)
    #expect(header.count == weights.layout.tensors.count + 1)
  }

  @Test func headerIsPaddedAndMetadataIsOptional() throws {
    // Header lengths of every remainder mod 8 come out padded.
    for length in 1...8 {
      let layout = WeightsLayout([TensorSpec(String(repeating: "x", count: length), [2])])
      let data = try SafetensorsWriter.encode(Weights(layout: layout, values: [1, 2]), metadata: [:])
      let n = Int(little(data, at: 0, as: UInt64.self))
      #expect(n % 8 == 0 && data.count == 8 + n + 8)
      let header = try #require(
        try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
      #expect(header["__metadata__"] == nil)
    }
    // Names and metadata that need JSON escaping.
    let odd = WeightsLayout([TensorSpec("a\"b\\c\n", [1])])
    let data = try SafetensorsWriter.encode(Weights(layout: odd, values: [3]), metadata: ["k": "tab\there"])
    let n = Int(little(data, at: 0, as: UInt64.self))
    let header = try #require(
      try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
    #expect(header["a\"b\\c\n"] != nil)
    #expect(header["__metadata__"] as? [String: String] == ["k": "tab\there"])
  }

  @Test func duplicateTensorNamesAreRefused() {
    let layout = WeightsLayout([TensorSpec("w", [1]), TensorSpec("w", [1])])
    let error = storeError {
      try SafetensorsWriter.encode(Weights(layout: layout, values: [1, 2]), metadata: [:])
    }
    #expect(error?.message.contains("more than once") == true)
  }
}

@Suite struct NPYTests {
  /// Splits an NPY 1.0 file into its header text and data, checking the preamble by the spec.
  private func parse(_ data: Data) throws -> (header: String, body: Data) {
    #expect(Array(data.prefix(6)) == [0x93] + Array("NUMPY".utf8))
    #expect(data[6] == 1 && data[7] == 0)
    let length = Int(little(data, at: 8, as: UInt16.self))
    #expect((10 + length) % 64 == 0)
    let header = try #require(String(data: data.subdata(in: 10..<(10 + length)), encoding: .ascii))
    #expect(header.hasSuffix("\n"))
    return (header, data.subdata(in: (10 + length)..<data.count))
  }

  @Test func outputParsesBackByTheSpec() throws {
    let values: [Float] = [1, -2.5, 0.1, .infinity, -0.0, 6]
    let (header, body) = try parse(try NPYWriter.encode(values: values, shape: [2, 3]))
    #expect(
      header.trimmingCharacters(in: .whitespacesAndNewlines)
        == "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")
    #expect(floats(body) == values.map(\.bitPattern))
  }

  @Test func shapeTuplesFollowPython() throws {
    #expect(try parse(NPYWriter.encode(values: [1, 2, 3], shape: [3])).header.contains("'shape': (3,), }"))
    #expect(try parse(NPYWriter.encode(values: [7], shape: [])).header.contains("'shape': (), }"))
    #expect(try parse(NPYWriter.encode(values: [], shape: [0, 4])).header.contains("'shape': (0, 4), }"))
    let error = storeError { try NPYWriter.encode(values: [1, 2], shape: [3]) }
    #expect(error?.code == .shapeMismatch)
  }

  @Test func oneFilePerTensorInLayoutOrder() throws {
    let weights = makeWeights(2)
    let files = NPYWriter.encodeTensors(weights)
    #expect(files.map(\.name) == ["dense/kernel", "dense/bias"])
    let bias = try parse(files[1].npy)
    #expect(bias.header.contains("'shape': (3,)"))
    #expect(floats(bias.body) == Array(weights[tensor: "dense/bias"]).map(\.bitPattern))
  }
}

@Suite struct RoundsCSVTests {
  @Test func headerThenOneRowPerRoundWithEmptyCellsForNil() {
    let csv = RoundsCSV.render([
      record(1, accuracy: 0.5), record(2, outcome: .abandoned, reason: "only 2 reports, \"late\""),
    ])
    let lines = csv.split(separator: "\n", omittingEmptySubsequences: false)
    #expect(lines.count == 4 && lines[3].isEmpty)
    #expect(lines[0] == Substring(RoundsCSV.columns.joined(separator: ",")))
    // The duration on the run's clock (42.5 simulated seconds), then the real seconds it took, then
    // the staleness figures (empty: a synchronous round).
    #expect(
      lines[1]
        == "1,100.0,142.5,committed,,7,5,1,1,0,420,300,1.0,0.5,0.5,0.6000000000000001,0.49,250,,42.5,0.25,,")
    #expect(
      lines[2]
        == "2,200.0,242.5,abandoned,\"only 2 reports, \"\"late\"\"\",7,2,1,1,0,420,300,,,,,,,,42.5,0.25,,")
    #expect(RoundsCSV.render([]) == RoundsCSV.columns.joined(separator: ",") + "\n")
  }
}
