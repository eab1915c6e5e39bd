-- Wireshark / tshark dissector for SplitWire frames (docs/wire-format.md, frame version 1).
--
-- SplitWire captures (python -m actors.simulate --capture FILE) are pcapng files of link type
-- LINKTYPE_USER0 (147, Wireshark's "USER0" encapsulation); this dissector registers for it.
--
--   wireshark -X lua_script:tools/wireshark/splitwire.lua wire.pcapng
--   tshark -X lua_script:tools/wireshark/splitwire.lua -r wire.pcapng
--
-- or copy it into Wireshark's personal Lua plugins folder. Every header field is shown, kinds,
-- dtypes and codecs by name; the payload is left as bytes (plaintext tensors, ciphertext or
-- shares). A frame the SplitWire decoder would refuse is marked malformed (expert info and the
-- splitwire.malformed field, with the reason), with the same checks, so tshark's verdict and
-- `python -m protocol.inspect`'s agree (tests/test_wire_capture.py checks it with real tshark).

local MAGIC = "SPWF"
local VERSION = 1
local MAX_NDIM = 8
local MAX_NAME = 32
local MAX_PAYLOAD = 64 * 1024 * 1024
local FIXED = 32

-- protocol/frame.py MessageKind, DType; protocol/codecs.py + encrypted.py codec ids
local KINDS = {
  [1] = "ACTIVATIONS", [2] = "LABELS", [3] = "GRADIENTS", [4] = "INFER_ACTIVATIONS",
  [5] = "PREDICTIONS", [6] = "QUERY", [7] = "QUERY_RESULT", [8] = "WEIGHTS",
  [9] = "HANDSHAKE", [10] = "SHARE", [11] = "CONTROL", [12] = "OPEN", [13] = "LOGITS_SHARE",
  [14] = "GRAD_SHARE", [15] = "CUT_GRAD_SHARE", [16] = "TRIPLE_REQUEST", [17] = "TRIPLES",
  [18] = "INFER_SHARE", [19] = "STEP", [20] = "MODEL_REQUEST", [21] = "QUERY_OUTPUT",
  [22] = "API_ACTIVATIONS", [23] = "API_PREDICTIONS", [24] = "MIDDLE", [25] = "MIDDLE_GRADIENTS",
  [26] = "INFER_MIDDLE",
}
local DTYPES = {
  [1] = "FLOAT32", [2] = "FLOAT64", [3] = "INT64", [4] = "UINT64", [5] = "UINT8", [6] = "INT32",
}
local CODECS = {
  [0] = "plaintext", [1] = "encrypted", [2] = "secret-shared",
  [3] = "secret-shared/plaintext-links",
}

local proto = Proto("splitwire", "SplitWire frame")

local f = {
  magic = ProtoField.string("splitwire.magic", "Magic"),
  version = ProtoField.uint8("splitwire.version", "Version", base.DEC),
  codec = ProtoField.uint8("splitwire.codec", "Codec", base.DEC, CODECS),
  kind = ProtoField.uint8("splitwire.kind", "Kind", base.DEC, KINDS),
  dtype = ProtoField.uint8("splitwire.dtype", "Dtype", base.DEC, DTYPES),
  ndim = ProtoField.uint8("splitwire.ndim", "Dimensions", base.DEC),
  sender_len = ProtoField.uint8("splitwire.sender_len", "Sender length", base.DEC),
  receiver_len = ProtoField.uint8("splitwire.receiver_len", "Receiver length", base.DEC),
  flags = ProtoField.uint8("splitwire.flags", "Flags (reserved)", base.HEX),
  session = ProtoField.uint64("splitwire.session", "Session id", base.DEC),
  seq = ProtoField.uint64("splitwire.seq", "Sequence number", base.DEC),
  payload_len = ProtoField.uint32("splitwire.payload_len", "Payload length", base.DEC),
  dim = ProtoField.uint32("splitwire.dim", "Dimension", base.DEC),
  shape = ProtoField.string("splitwire.shape", "Shape"),
  sender = ProtoField.string("splitwire.sender", "Sender"),
  receiver = ProtoField.string("splitwire.receiver", "Receiver"),
  kind_name = ProtoField.string("splitwire.kind_name", "Kind name"),
  dtype_name = ProtoField.string("splitwire.dtype_name", "Dtype name"),
  codec_name = ProtoField.string("splitwire.codec_name", "Codec name"),
  payload = ProtoField.bytes("splitwire.payload", "Payload"),
  payload_kept = ProtoField.uint32("splitwire.payload_kept", "Payload bytes captured", base.DEC),
  malformed = ProtoField.string("splitwire.malformed", "Malformed"),
}
proto.fields = {
  f.magic, f.version, f.codec, f.kind, f.dtype, f.ndim, f.sender_len, f.receiver_len, f.flags,
  f.session, f.seq, f.payload_len, f.dim, f.shape, f.sender, f.receiver, f.kind_name,
  f.dtype_name, f.codec_name, f.payload, f.payload_kept, f.malformed,
}

local ex_malformed = ProtoExpert.new("splitwire.malformed.expert", "Malformed SplitWire frame",
                                     expert.group.MALFORMED, expert.severity.ERROR)
local ex_snapped = ProtoExpert.new("splitwire.snapped", "Payload cut short by the capture's snaplen",
                                   expert.group.SEQUENCE, expert.severity.NOTE)
proto.experts = { ex_malformed, ex_snapped }

local function valid_name(s)
  -- the whole name, [a-z0-9:_.-]+ (Lua's $ is the true end: no trailing newline slips through)
  return s:match("^[a-z0-9:_%.%-]+$") ~= nil
end

local function mark(tree, pinfo, root, reason)
  root:add(f.malformed, reason):set_generated()
  root:add_proto_expert_info(ex_malformed, reason)
  pinfo.cols.info:set("Malformed SplitWire frame: " .. reason)
end

-- The fixed header's checks, in protocol.frame._parse_header's order; nil when it is fine.
local function check_fixed(tvb)
  if tvb:range(0, 4):string() ~= MAGIC then return "bad magic: not a SplitWire frame" end
  if tvb:range(4, 1):uint() ~= VERSION then return "unsupported frame version" end
  if CODECS[tvb:range(5, 1):uint()] == nil then return "unknown codec id" end
  if tvb:range(11, 1):uint() ~= 0 then return "reserved flags byte is not 0" end
  if KINDS[tvb:range(6, 1):uint()] == nil then return "invalid message kind" end
  if DTYPES[tvb:range(7, 1):uint()] == nil then return "invalid dtype" end
  if tvb:range(8, 1):uint() > MAX_NDIM then return "ndim exceeds 8" end
  local slen, rlen = tvb:range(9, 1):uint(), tvb:range(10, 1):uint()
  if slen < 1 or slen > MAX_NAME or rlen < 1 or rlen > MAX_NAME then
    return "sender/receiver name length out of range"
  end
  if tvb:range(28, 4):le_uint() > MAX_PAYLOAD then return "oversized frame" end
  return nil
end

local function add_fixed(tree, tvb)
  tree:add(f.magic, tvb:range(0, 4))
  tree:add(f.version, tvb:range(4, 1))
  tree:add(f.codec, tvb:range(5, 1))
  tree:add(f.kind, tvb:range(6, 1))
  tree:add(f.dtype, tvb:range(7, 1))
  tree:add(f.ndim, tvb:range(8, 1))
  tree:add(f.sender_len, tvb:range(9, 1))
  tree:add(f.receiver_len, tvb:range(10, 1))
  tree:add(f.flags, tvb:range(11, 1))
  tree:add_le(f.session, tvb:range(12, 8))
  tree:add_le(f.seq, tvb:range(20, 8))
  tree:add_le(f.payload_len, tvb:range(28, 4))
end

function proto.dissector(tvb, pinfo, tree)
  pinfo.cols.protocol = "SplitWire"
  local kept, wire_len = tvb:len(), tvb:reported_len()
  local root = tree:add(proto, tvb:range(0, kept))
  if kept < FIXED then
    return mark(tree, pinfo, root, "truncated frame: the fixed header is 32 bytes")
  end
  add_fixed(root, tvb)
  local bad = check_fixed(tvb)
  if bad then return mark(tree, pinfo, root, bad) end

  local ndim, slen, rlen = tvb:range(8, 1):uint(), tvb:range(9, 1):uint(), tvb:range(10, 1):uint()
  local header_len = FIXED + 4 * ndim + slen + rlen
  if kept < header_len then
    return mark(tree, pinfo, root, "truncated frame: header needs " .. header_len .. " bytes")
  end
  local dims, product = {}, 1
  for i = 0, ndim - 1 do
    local d = tvb:range(FIXED + 4 * i, 4):le_uint()
    root:add_le(f.dim, tvb:range(FIXED + 4 * i, 4))
    dims[#dims + 1] = tostring(d)
    if product <= MAX_PAYLOAD then product = product * math.max(d, 1) end
  end
  local shape = #dims > 0 and table.concat(dims, "x") or "scalar"
  root:add(f.shape, shape):set_generated()
  local kind = KINDS[tvb:range(6, 1):uint()]
  local dtype = DTYPES[tvb:range(7, 1):uint()]
  root:add(f.kind_name, kind):set_generated()
  root:add(f.dtype_name, dtype):set_generated()
  root:add(f.codec_name, CODECS[tvb:range(5, 1):uint()]):set_generated()
  if product > MAX_PAYLOAD then
    return mark(tree, pinfo, root, "shape is larger than any payload a link accepts")
  end
  -- Names are checked before they are shown: a bad one may hold tabs or newlines.
  local off = FIXED + 4 * ndim
  local sender, receiver = tvb:range(off, slen):string(), tvb:range(off + slen, rlen):string()
  if not valid_name(sender) then return mark(tree, pinfo, root, "sender name is not [a-z0-9:_.-]") end
  if not valid_name(receiver) then
    return mark(tree, pinfo, root, "receiver name is not [a-z0-9:_.-]")
  end
  root:add(f.sender, tvb:range(off, slen))
  root:add(f.receiver, tvb:range(off + slen, rlen))
  local payload_len = tvb:range(28, 4):le_uint()
  if header_len + payload_len ~= wire_len then
    local what = header_len + payload_len > wire_len and "truncated" or "trailing bytes after"
    return mark(tree, pinfo, root, what .. " frame: header says " .. payload_len ..
                " payload bytes, the frame had " .. (wire_len - header_len))
  end
  local got = kept - header_len
  root:add(f.payload_kept, got):set_generated()
  if got > 0 then root:add(f.payload, tvb:range(header_len, got)) end
  if got < payload_len then root:add_proto_expert_info(ex_snapped) end
  root:append_text(string.format(", %s -> %s, %s, seq %s", sender, receiver, kind,
                                 tostring(tvb:range(20, 8):le_uint64())))
  pinfo.cols.src = sender
  pinfo.cols.dst = receiver
  pinfo.cols.info:set(string.format("%s %s seq=%s %s[%s]", kind, CODECS[tvb:range(5, 1):uint()],
                      tostring(tvb:range(20, 8):le_uint64()), dtype:lower(), shape))
end

DissectorTable.get("wtap_encap"):add(wtap_encaps.USER0, proto)
