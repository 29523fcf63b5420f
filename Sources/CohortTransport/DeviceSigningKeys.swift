public import CohortCore
public import CohortProtocol
public import CohortSecAgg
import Foundation
public import SwiftASN1
import Synchronization
public import X509

/// The certificate extension that binds a device's long-term Ed25519 signing key (the identity
/// key of the active secure-aggregation variant) to its X.509 certificate, so the CA that signed
/// the certificate vouches for "device N signs with key K" and any third party holding the CA
/// certificate can check it.
///
/// - OID `2.25.7311430286612045917`: the ITU-T X.667 arc 2.25, which needs no registration. X.667
///   puts a 128-bit UUID there; swift-asn1 (and so swift-certificates) reads arcs as 64-bit
///   integers and would refuse such a certificate, so the arc is a random 63-bit number instead.
/// - Non-critical: TLS stacks that do not know it still accept the certificate for mutual TLS.
/// - Value: the DER `SubjectPublicKeyInfo` of the Ed25519 key (RFC 8410, algorithm 1.3.101.112),
///   the form `openssl pkey -pubout -outform DER` writes, always 44 bytes.
public enum DeviceSigningKeyExtension {
  public static let oid: ASN1ObjectIdentifier = [2, 25, 7_311_430_286_612_045_917]

  /// The fixed DER head of an Ed25519 SubjectPublicKeyInfo: SEQUENCE, AlgorithmIdentifier
  /// {1.3.101.112}, BIT STRING of 33 bytes (no unused bits). DER is canonical, so a value is
  /// valid exactly when it is this head followed by the 32 key bytes.
  static let subjectPublicKeyInfoHead: [UInt8] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
  ]

  /// The extension carrying `publicKey` (32 bytes).
  public static func `extension`(publicKey: [UInt8]) -> Certificate.Extension {
    precondition(publicKey.count == 32, "an Ed25519 public key has 32 bytes")
    return Certificate.Extension(
      oid: oid, critical: false, value: (subjectPublicKeyInfoHead + publicKey)[...])
  }

  /// The signing key `certificate` carries; nil when it has no such extension or its value is not
  /// an Ed25519 SubjectPublicKeyInfo.
  public static func publicKey(of certificate: Certificate) -> [UInt8]? {
    let found = certificate.extensions.filter { $0.oid == oid }
    // Two values would leave the binding ambiguous.
    guard found.count == 1, let value = found.first?.value,
      value.count == subjectPublicKeyInfoHead.count + 32,
      value.starts(with: subjectPublicKeyInfoHead)
    else { return nil }
    return Array(value.suffix(32))
  }
}

/// The file `device-<n>-signing.key`: a device's Ed25519 secret key as PKCS#8 PEM (RFC 8410,
/// `-----BEGIN PRIVATE KEY-----`, the 32-byte seed), the form `openssl genpkey -algorithm ed25519`
/// writes and `openssl pkey -in device-1-signing.key -pubout` reads. libsodium expands the seed
/// into its 64-byte secret key.
public enum DeviceSigningKeyFile {
  /// The fixed DER head of an Ed25519 PKCS#8 v1 private key: version 0, AlgorithmIdentifier
  /// {1.3.101.112}, OCTET STRING wrapping the 32-byte seed as an OCTET STRING.
  static let privateKeyInfoHead: [UInt8] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
  ]

  /// PEM text of the key whose seed is `seed` (32 bytes).
  public static func pem(seed: [UInt8]) -> String {
    var der = privateKeyInfoHead + seed
    defer { SecAggCrypto.zero(&der) }
    let body = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
    return "-----BEGIN PRIVATE KEY-----\n\(body)\n-----END PRIVATE KEY-----\n"
  }

  /// libsodium's 64-byte Ed25519 secret key from the PEM text of a signing key file; `source` names
  /// the file in errors. The caller zeroes the result after use.
  public static func secretKey(pem: String, source: String) throws(CohortError) -> [UInt8] {
    let unreadable = CohortError(
      .invalidData, "\(source) is not an Ed25519 private key in PKCS#8 PEM",
      fix: "pass the device-<n>-signing.key that `cohort certs create` wrote for this device")
    let lines = pem.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
    guard let begin = lines.firstIndex(of: "-----BEGIN PRIVATE KEY-----"),
      let end = lines.firstIndex(of: "-----END PRIVATE KEY-----"), begin < end,
      var data = Data(base64Encoded: lines[(begin + 1)..<end].joined())
    else { throw unreadable }
    var der = [UInt8](data)
    // Foundation's copy is overwritten too; the PEM text itself is the file's and cannot be.
    data.resetBytes(in: 0..<data.count)
    defer { SecAggCrypto.zero(&der) }
    guard der.count == privateKeyInfoHead.count + 32, der.starts(with: privateKeyInfoHead) else {
      throw unreadable
    }
    var seed = Array(der.suffix(32))
    defer { SecAggCrypto.zero(&seed) }
    return SecAggCrypto.signingPair(seed: seed).secretKey
  }
}

/// A device certificate that passed ``DeviceCertificateVerifier``: the device number its common
/// name gives and the signing key its extension carries.
public struct VerifiedDeviceCertificate: Sendable, Hashable {
  public var device: Int
  public var signingPublicKey: [UInt8]
  /// The certificate as presented (DER), to hand on to the device's peers.
  public var der: [UInt8]
}

/// Checks device certificates against a CA: RFC 5280 path validation (signatures, validity,
/// CA constraints), the clientAuth usage, the signing-key extension and the `device-<n>` name.
public struct DeviceCertificateVerifier: Sendable {
  /// Nil: no CA to check against (a server without mutual TLS); only the form is checked.
  let roots: [Certificate]?

  /// Trusts the CA certificates in `caPEM` (the `ca.pem` of `cohort certs create`).
  public init(caPEM: String) throws(CohortError) {
    do {
      roots = try PEMDocument.parseMultiple(pemString: caPEM).map { try Certificate(pemDocument: $0) }
    } catch {
      throw CohortError(
        .invalidData, "the CA certificate is not PEM: \(error)",
        fix: "pass the ca.pem that `cohort certs create` wrote")
    }
    guard roots?.isEmpty == false else {
      throw CohortError(
        .invalidData, "the CA file holds no certificate",
        fix: "pass the ca.pem that `cohort certs create` wrote")
    }
  }

  private init(roots: [Certificate]?) { self.roots = roots }

  /// Checks only the form (the extension and the name), not who signed the certificate.
  static let formOnly = DeviceCertificateVerifier(roots: nil)

  /// Whether a CA is checked.
  public var checksChain: Bool { roots != nil }

  /// Verifies `der`; with `device`, also that it names that device.
  public func verify(der: [UInt8], device: Int? = nil) async -> Result<
    VerifiedDeviceCertificate, DeviceCertificateRefusal
  > {
    let certificate: Certificate
    do {
      certificate = try Certificate(derEncoded: der)
    } catch {
      return .failure(.init(.unreadable, "the certificate is not DER X.509 (\(der.count) bytes)"))
    }
    if let roots {
      var verifier = Verifier(rootCertificates: CertificateStore(roots)) { RFC5280Policy() }
      let result = await verifier.validate(leaf: certificate, intermediates: CertificateStore())
      guard case .validCertificate = result else {
        return .failure(.init(.untrusted, "\(certificate.subject) does not chain to the trusted CA"))
      }
      guard (try? certificate.extensions.extendedKeyUsage)?.contains(.clientAuth) == true else {
        return .failure(.init(.untrusted, "\(certificate.subject) is not a client (device) certificate"))
      }
    }
    guard let key = DeviceSigningKeyExtension.publicKey(of: certificate) else {
      return .failure(
        .init(
          .noSigningKey,
          "\(certificate.subject) carries no Ed25519 signing key (extension \(DeviceSigningKeyExtension.oid))"
        ))
    }
    guard let named = Self.deviceNumber(certificate) else {
      return .failure(.init(.wrongDevice, "\(certificate.subject) does not name a device (device-<n>)"))
    }
    if let device, device != named {
      return .failure(.init(.wrongDevice, "the certificate names device \(named), not device \(device)"))
    }
    return .success(VerifiedDeviceCertificate(device: named, signingPublicKey: key, der: der))
  }

  /// n of the common name `device-<n>`.
  static func deviceNumber(_ certificate: Certificate) -> Int? {
    var names: [String] = []
    for rdn in certificate.subject {
      for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
        if let name = String(attribute.value) { names.append(name) }
      }
    }
    guard names.count == 1, let name = names.first, name.hasPrefix("device-") else { return nil }
    let digits = name.dropFirst("device-".count)
    guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
    return Int(digits)
  }
}

/// A device's long-term identity for the active secure-aggregation variant: its certificate, its
/// Ed25519 secret key, and the CA it checks its peers' certificates against.
public final class DeviceSigningIdentity: SecureAggregationIdentity {
  public let certificate: VerifiedDeviceCertificate
  /// The trust root for the peers' certificates (the device's `--ca`).
  let verifier: DeviceCertificateVerifier
  /// libsodium's 64-byte secret key, zeroed when the identity goes away.
  private let secret: Mutex<[UInt8]>

  /// Takes `secretKey` as given (tests use it to give a device a key its certificate does not
  /// carry); ``load(certificatePEM:signingKeyPEM:caPEM:device:)`` checks that they belong together.
  init(certificate: VerifiedDeviceCertificate, secretKey: [UInt8], verifier: DeviceCertificateVerifier) {
    self.certificate = certificate
    self.verifier = verifier
    secret = Mutex(secretKey)
  }

  deinit { secret.withLock { SecAggCrypto.zero(&$0) } }

  /// The identity of device `device` from its certificate (`--cert`), its signing key file
  /// (`--signing-key`) and the CA (`--ca`): refused unless the certificate verifies against the CA,
  /// names this device and carries the public half of the signing key.
  public static func load(certificatePEM: String, signingKeyPEM: String, caPEM: String, device: Int)
    async throws(CohortError) -> DeviceSigningIdentity
  {
    let der: [UInt8]
    do {
      der = try Certificate(pemEncoded: certificatePEM).serializeAsPEM().derBytes
    } catch {
      throw CohortError(
        .invalidData, "the device certificate is not a PEM certificate: \(error)",
        fix: "pass the device-<n>.pem that `cohort certs create` wrote as --cert")
    }
    let verifier = try DeviceCertificateVerifier(caPEM: caPEM)
    let verified: VerifiedDeviceCertificate
    switch await verifier.verify(der: der, device: device) {
    case .success(let v): verified = v
    case .failure(let refusal):
      throw CohortError(
        .invalidData, "the device certificate cannot carry the signing key: \(refusal)",
        fix: "pass --cert device-\(device).pem from the CA given as --ca (`cohort certs create` makes both)")
    }
    var secretKey = try DeviceSigningKeyFile.secretKey(pem: signingKeyPEM, source: "--signing-key")
    defer { SecAggCrypto.zero(&secretKey) }
    // libsodium's secret key ends with its public key.
    guard SecAggCrypto.equal(Array(secretKey.suffix(32)), verified.signingPublicKey) else {
      throw CohortError(
        .invalidData, "--signing-key is not the key device \(device)'s certificate carries",
        fix: "pass device-\(device)-signing.key, written with device-\(device).pem by `cohort certs create`")
    }
    return DeviceSigningIdentity(certificate: verified, secretKey: secretKey, verifier: verifier)
  }

  /// A copy of the secret key for one protocol run, which the caller zeroes.
  public func secretKey() -> [UInt8] { secret.withLock { $0 } }

  public var certificateDER: [UInt8] { certificate.der }

  public func identityKeys(peers: [SecureAggregationBegin.Peer], count: Int, ownIndex: Int) async -> Result<
    [SecAggIndex: [UInt8]], DeviceCertificateRefusal
  > {
    await identityKeys(
      peers: peers.map { (index: $0.index, der: $0.certificate) }, count: count, ownIndex: ownIndex)
  }

  /// The signing keys of a round's members by index, from the certificates the server relayed:
  /// every index 1...count exactly once, this device's own certificate at `ownIndex`, each one
  /// verified against this device's CA, no device or key twice. Any failure refuses the round:
  /// a server that substitutes one key must not get this device's signature on anything.
  func identityKeys(peers: [(index: Int, der: [UInt8])], count: Int, ownIndex: Int) async -> Result<
    [SecAggIndex: [UInt8]], DeviceCertificateRefusal
  > {
    guard peers.count == count, Set(peers.map(\.index)) == Set(1...max(count, 1)) else {
      return .failure(
        .init(.missing, "the server sent \(peers.count) certificates for \(count) members, not one per index")
      )
    }
    var keys: [SecAggIndex: [UInt8]] = [:]
    var devices = Set<Int>()
    var seen = Set<[UInt8]>()
    for peer in peers {
      if peer.index == ownIndex, peer.der != certificate.der {
        return .failure(
          .init(.wrongDevice, "the server put another certificate at this device's index \(ownIndex)"))
      }
      switch await verifier.verify(der: peer.der) {
      case .failure(let refusal):
        return .failure(.init(refusal.reason, "member \(peer.index): \(refusal.detail)"))
      case .success(let verified):
        guard devices.insert(verified.device).inserted, seen.insert(verified.signingPublicKey).inserted else {
          return .failure(
            .init(.wrongDevice, "member \(peer.index): device \(verified.device) or its key appears twice"))
        }
        keys[SecAggIndex(peer.index)] = verified.signingPublicKey
      }
    }
    return .success(keys)
  }
}
